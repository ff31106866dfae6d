"""bench/gpu_run.sh --dry_run: the prepared GPU window's command, at tiny sizes on the CPU, so
it cannot rot between windows (no timing asserted). 1.5-2.5 minutes on 2 cores (2026-11-28)."""

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


def _tiny_cifar(root):
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, count in (("train", 4), ("test", 2)):
    for c in range(10):
      os.makedirs(root / split / f"class{c}")
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
            root / split / f"class{c}" / f"{i}.jpg")


@pytest.mark.slow
def test_a_run_split_over_windows_equals_one_run(tmp_path):
  """bench/gpu_train.py stopped by its budget, then continued: the same weights, bitwise."""
  import jax
  import numpy as np
  from bmd_jax import checkpoint
  _tiny_cifar(tmp_path / "data")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

  def window(runs, budget):
    command = ["python3", os.path.join(REPO, "bench", "gpu_train.py"),
               f"--data_dir={tmp_path / 'data'}", f"--runs_dir={runs}", "--epochs=2",
               "--variants=bd_bnn", "--batch_size=8", "--blocks_per_stage=1",
               "--num_train_steps=6", f"--budget_s={budget}", f"--records={runs}.json"]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return json.load(open(f"{runs}.json"))[0]

  assert not window(tmp_path / "split", 5)["complete"]  # stopped at step 1 of step 1
  continued = window(tmp_path / "split", 900)
  straight = window(tmp_path / "straight", 900)
  assert continued["complete"] and straight["complete"]
  assert continued["top1"] == straight["top1"]
  states = [checkpoint.read_state(str(tmp_path / run / "bd_bnn_seed0" / "checkpoints" / "step2"
                                      / "6" / "state")) for run in ("split", "straight")]
  jax.tree_util.tree_map(np.testing.assert_array_equal, *states)


def test_fitted_schedule_is_the_longest_that_fits():
  """gpu_train --epochs=0: every run's fixed cost plus two steps of E epochs at the measured
  step time (with the loop's slack) fits its share of the budget, and E + 1 would not.
  In a child process: bench/ modules define absl flags at import."""
  code = """
import sys; sys.path.insert(0, 'bench')
import gpu_train
for budget, runs, step_s, steps, fixed in ((240, 2, 0.003, 390, 60), (900, 4, 0.0021, 390, 45),
                                           (100, 2, 0.05, 390, 40)):
  e = gpu_train.fitted_epochs(budget, runs, step_s, steps, fixed)
  cost = lambda epochs: fixed + 2 * epochs * steps * step_s * gpu_train.LOOP_SLACK
  print(e, cost(e) <= budget / runs or e == 1, cost(e + 1) > budget / runs)
"""
  result = subprocess.run(["python3", "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.splitlines()]
  assert [r[1:] for r in rows] == [["True", "True"]] * 3, rows
  assert rows[0][0] == "11" and rows[2][0] == "1"  # 60 s / (2 * 390 * 3 ms * 2.2) = 11.7
