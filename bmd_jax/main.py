"""Command line: ``python -m bmd_jax.main --config=configs/default.py --workdir=DIR``.

A thin entry point: flags in, `train.train_and_evaluate` out. All logic lives in importable
modules, so notebooks and tests call the same functions. Override any config field with
``--config.FIELD=VALUE`` (e.g. ``--config.num_epochs=5``).
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bmd_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard events and checkpoints.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Our progress lines at INFO; the libraries' (Orbax logs every save) only from WARNING.
  absl_logging.set_verbosity(absl_logging.WARNING)
  log = logging.getLogger("bmd_jax")
  log.setLevel(logging.INFO)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log.addHandler(handler)
  log.propagate = False
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.Preempted as e:
    log.warning("%s", e)


if __name__ == "__main__":
  app.run(main)
