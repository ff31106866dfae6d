"""Command line: ``python -m bmd_jax.main --config=configs/default.py --workdir=DIR``.

A thin entry point: flags in, `train.train_and_evaluate` out. All logic lives in importable
modules, so notebooks and tests call the same functions. Override any config field with
``--config.FIELD=VALUE`` (e.g. ``--config.num_epochs=5``); ``--print_config`` lists them. A
``--config=configs/NAME.py`` is found from any working directory (config_files.resolve).

Several processes (hosts) run the same command; JAX's distributed runtime joins them
(sharding.initialize_distributed): give ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or nothing
on a TPU pod or under srun, where it is detected. See launch/ and the README.

Exit status: 0 when every stage finished; EXIT_PREEMPTED (75, EX_TEMPFAIL) after SIGTERM once
the checkpoint is written, so a scheduler can requeue the job and the same command resumes;
1 on an error (one line naming it and the fix for the errors a user can fix); 2 for a bad
command line (e.g. an unknown config field).
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from bmd_jax import (checkpoint, config_files, metric_writers, sharding, train, workdir_lock,
                     xla_flags)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early on purpose, run the same command again
EXIT_ERROR = 1
EXIT_USAGE = 2

# Errors whose message names the problem and the fix: printed as one line, without a trace.
USER_ERRORS = (checkpoint.ConfigChangedError, checkpoint.CheckpointDamagedError,
               checkpoint.CheckpointWriteError, workdir_lock.WorkdirLockedError,
               train.NonFiniteLossError, NotADirectoryError)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard events and checkpoints.")
config_flags.DEFINE_config_file(
    "config", None,
    "Training configuration file, found from any working directory when it is one of "
    f"configs/: {', '.join(config_files.available())}. Override a field with "
    "--config.FIELD=VALUE; --print_config lists every field with its value.",
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
  log = logging.getLogger("bmd_jax")
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.Preempted as e:
    log.warning("%s", e)
    sys.exit(EXIT_PREEMPTED)
  except USER_ERRORS as e:
    log.error("%s", e)
    sys.exit(EXIT_ERROR)


def _config_found(argument: str) -> str:
  """--config=PATH[:options] with PATH looked up in the checkout's configs/ when it does not
  exist from here (config_files.resolve); a config that exists nowhere is named, with those
  that do, in one line."""
  name, value = argument.split("=", 1)
  path, colon, options = value.partition(":")
  try:
    return f"{name}={config_files.resolve(path)}{colon}{options}"
  except FileNotFoundError as e:
    print(f"{name}: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse_flags(argv):
  """absl's flag parsing, with --config found from any working directory and an unknown
  --config.FIELD named in one line (ml_collections raises a bare AttributeError or KeyError
  from deep inside the parser)."""
  argv = [_config_found(a) if a.startswith(("--config=", "-config=")) else a for a in argv]
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    field = str(e).strip("\"'")
    given = [a for a in argv[1:] if a.startswith("--config.") and field in a]
    where = given[0] if given else f"--config...{field}"
    path = where.removeprefix("--config.").partition("=")[0]
    renamed = config_files.renamed_loss_field(path)
    fix = (f"loss options are one block per term since 2026-11-28: --config.{renamed}"
           if renamed else "Check its spelling against the config file (configs/default.py "
           "lists every field)")
    print(f"{where}: the config has no field {field!r}. {fix}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
