"""bench/gpu_run.sh --dry_run: the prepared GPU window's command, at tiny sizes on the CPU, so
it cannot rot between windows (no timing asserted). About 4 minutes alone on 2 cores."""

import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_KEYS = {"model", "variant", "seed", "epochs_per_step", "top1", "device", "wall_seconds",
               "command", "date"}


@pytest.mark.slow
def test_gpu_run_dry_run(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("OUT", None)
  result = subprocess.run([os.path.join(REPO, "bench", "gpu_run.sh"), "--dry_run", "--out",
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  files = sorted(os.listdir(out))
  assert len(files) <= 8, files  # what comes back from the GPU machine
  assert {"gpu_check.json", "train_step.json", "train_step_bf16.json", "records.json",
          "log.txt", "runs_bd_bnn.tar.gz", "runs_plain_binary.tar.gz"} <= set(files)
  assert all(os.path.getsize(out / f) < 16 * 2**20 for f in files)
  check = json.load(open(out / "gpu_check.json"))
  assert check["max_update_rel_diff"] < 1e-5  # the CPU against itself here
  records = json.load(open(out / "records.json"))
  assert {r["variant"] for r in records} == {"bd_bnn", "plain_binary"}
  for record in records:
    assert record["complete"] and RECORD_KEYS <= set(record), record
    assert 0.0 <= record["top1"] <= 1.0
