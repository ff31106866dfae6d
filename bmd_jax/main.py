"""Command line: ``python -m bmd_jax.main --config=configs/default.py --workdir=DIR``.

A thin entry point: flags in, `train.train_and_evaluate` out. All logic lives in importable
modules, so notebooks and tests call the same functions. Override any config field with
``--config.FIELD=VALUE`` (e.g. ``--config.num_epochs=5``).

Several processes (hosts) run the same command; JAX's distributed runtime joins them
(sharding.initialize_distributed): give ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or nothing
on a TPU pod or under srun, where it is detected. See launch/ and the README.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from bmd_jax import metric_writers, sharding, train, xla_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard events and checkpoints.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Start jax.distributed: 'auto' with a coordinator address or on a detected "
                  "TPU pod / multi-task SLURM or MPI job; 'on' always; 'off' never.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator (multi-process runs off TPU pods).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metric_writers.console_logging()
  xla_flags.configure_cpu()  # before JAX's backend starts (jax.distributed starts it)
  sharding.initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address,
                                  FLAGS.num_processes, FLAGS.process_id)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.Preempted as e:
    logging.getLogger("bmd_jax").warning("%s", e)


if __name__ == "__main__":
  app.run(main)
