"""A digits run whose workdir is on a local GCS emulator, end to end; prints a JSON summary.

    python tests/gcs_emulator_check.py gs://<bucket>/runs/x <local metrics folder>

Run by test_cloud_paths.py in a fresh interpreter with STORAGE_EMULATOR_HOST (for gcsfs, which
etils.epath uses) and TENSORSTORE_GCS_HTTP_URL (for Orbax's array writes) pointing at the
emulator. Metrics and TensorBoard are not URL-aware yet (metric_writers.py): they go to a local
folder here, so that this checks checkpoints, the lock, resume, export and analyze alone.
"""

import json
import logging
import os
import sys

from etils import epath

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, REPO)

import bmd_jax  # noqa: E402  pylint: disable=wrong-import-position

bmd_jax.configure_cpu()

from bmd_jax.tools import analyze, export  # noqa: E402,E501  pylint: disable=wrong-import-position
from bmd_jax.infra import checkpoint
from bmd_jax.training import metric_writers, train
from bmd_jax.configs import default  # noqa: E402  pylint: disable=wrong-import-position


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def main(url: str, local_metrics: str) -> dict:
  config = default.get_config()
  config.num_train_steps = 12
  config.log_every_steps = 6
  config.eval_every_epochs = 100.0
  train.MetricWriter = lambda workdir: metric_writers.MetricWriter(local_metrics,
                                                                   tensorboard=False)
  lines = _Lines()
  logging.getLogger("bmd_jax").addHandler(lines)
  logging.getLogger("bmd_jax").setLevel(logging.INFO)
  train.train_and_evaluate(config, url)
  train.train_and_evaluate(config, url)  # again: resumes from the checkpoint on the emulator
  folder = checkpoint.stage_directory(url, "train")
  teacher = checkpoint.load_variables(str(folder), checkpoint.read_variables(
      checkpoint.choose_checkpoint(url)), "WDM teacher checkpoint")
  manifest = export.export(url, f"{url}/export/digits.npz")
  record = analyze.analyze(url)
  return {
      "stage_directory": str(folder),
      "steps": checkpoint.finished_steps(folder),
      "resumed": [l for l in lines.lines if "resumed from step" in l],
      "lock_left": (epath.Path(url) / "run.lock").exists(),
      "teacher_layers": sorted(teacher["params"]),
      "export_bytes": manifest["sizes"]["export_file_bytes"],
      "export_on_gcs": (epath.Path(url) / "export" / "digits.npz").exists(),
      "figures": record["figures"],
      "local_gs_folder": os.path.exists("gs:"),
  }


if __name__ == "__main__":
  print("SUMMARY " + json.dumps(main(sys.argv[1], sys.argv[2])))
