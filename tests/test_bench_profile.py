"""bench/profile_train_step.py runs end to end at a tiny size and lists the step's operations
(no torch needed)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_profile_smoke_run(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "profile_train_step.py"),
       "--blocks_per_stage=1", "--image_size=8", "--batch=4", "--profiled_steps=1", "--top=5",
       f"--trace_dir={tmp_path}"], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ms wall per step" in proc.stdout and "| operation | ms / step | source |" in proc.stdout
  table = proc.stdout.split("| operation | ms / step | source |")[1].splitlines()[2:]
  assert len([row for row in table if row.startswith("| ")]) == 5
