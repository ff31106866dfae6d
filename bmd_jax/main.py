"""Command line: ``python -m bmd_jax.main --config=default --workdir=DIR``.

A thin entry point: flags in, `train.train_and_evaluate` out. All logic lives in importable
modules, so notebooks and tests call the same functions. Override any config field with
``--config.FIELD=VALUE`` (e.g. ``--config.num_epochs=5``); ``--print_config`` lists them.
``--config`` takes a recipe's short name (bmd_jax/configs/NAME.py, found from any working
directory and in a wheel install), ``NAME:ARG`` for its get_config's argument, or a path
(config_files.resolve).

Several processes (hosts) run the same command; JAX's distributed runtime joins them
(sharding.initialize_distributed): give ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or nothing
on a TPU pod or under srun, where it is detected. See launch/ and the README.

Errors, exit statuses and Ctrl-C: see bmd_jax/infra/cli.py (one line naming a user's mistake and
its fix; 75 after SIGTERM once the checkpoint is written, so a scheduler can requeue the job
and the same command resumes; 130 after Ctrl-C; 2 for a bad command line).
"""

import signal

if __name__ == "__mp_main__":
  # A worker process (grain's, started by spawn) imports this file first. A terminal's Ctrl-C
  # reaches every process of its group: the main process alone answers it, in one line, and
  # stops the workers. Before the imports below, which take seconds.
  signal.signal(signal.SIGINT, signal.SIG_IGN)

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from bmd_jax.infra import checkpoint, cli, config_files

# A bare KeyboardInterrupt's line (the run's own stop says which checkpoint it kept).
from bmd_jax.training import metric_writers, sharding, train
from bmd_jax.xla_cpu import xla_flags
INTERRUPTED = ("interrupted (Ctrl-C): the checkpoints completed before it are kept; run the "
               "same command to resume from the newest")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard events and checkpoints.")
config_flags.DEFINE_config_file(
    "config", None,
    "Training configuration: a recipe's name, one of "
    f"{', '.join(config_files.recipes())} (bmd_jax/configs/NAME.py); NAME:ARG passes ARG to "
    "its get_config (imagenet_bdbnn:diffkurt); or a path to a config file (a path that "
    "exists wins over a recipe's name). Override a field with --config.FIELD=VALUE; "
    "--print_config lists every field with its value.",
    lock_config=True)
flags.DEFINE_bool("print_config", False,
                  "Print the resolved config (every field, and each stage's overrides) and exit "
                  "without training; no --workdir needed.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Start jax.distributed: 'auto' with a coordinator address or on a detected "
                  "TPU pod / multi-task SLURM or MPI job; 'on' always; 'off' never.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator (multi-process runs off TPU pods).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.print_config:
    print(FLAGS.config)
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required: the folder for metrics, TensorBoard events "
                         "and checkpoints (a rerun with the same one resumes)")
  metric_writers.console_logging()
  xla_flags.configure_cpu()  # before JAX's backend starts (jax.distributed starts it)
  checkpoint.one_line_orbax_errors()
  sharding.initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address,
                                  FLAGS.num_processes, FLAGS.process_id)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, interrupted=INTERRUPTED)
