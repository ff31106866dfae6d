"""bench/ablation.py end to end on digits (two steps, 4 steps a stage): every variant runs,
and variants with the same step 1 train it once and start step 2 from that checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from bmd_jax.infra import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWO_STEP_DIGITS = """
from bmd_jax.infra.config_files import use_two_steps
from bmd_jax.configs import default

def get_config():
  config = default.get_config()
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_epochs = 100.0
  config.checkpoint_every_steps = 2
  return use_two_steps(config, {"kd": {"weight": 1.0}, "wdm": {"weight": 1.0}})
"""


@pytest.mark.slow
def test_ablation_shares_step1_between_variants_alike(tmp_path):
  config_file = tmp_path / "two_step_digits.py"
  config_file.write_text(TWO_STEP_DIGITS)
  workdir = tmp_path / "ablation"
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "ablation.py"), f"--config={config_file}",
       f"--workdir={workdir}", "--seeds=0", "--variants=plain_binary,wdm_histogram,kurtosis_only"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads((workdir / "ablation.json").read_text())
  assert list(rows) == ["plain_binary", "wdm_histogram", "kurtosis_only"]
  assert [r["first_stage_from"] for runs in rows.values() for r in runs] == [
      "plain_binary", "plain_binary", "kurtosis_only"]
  for runs in rows.values():
    assert 0.0 <= runs[0]["accuracy"] <= 1.0
  assert "| wdm_histogram |" in out.stdout

  stages_of = lambda name: sorted(checkpoint.list_checkpoints(workdir / f"{name}_seed0"))
  assert stages_of("plain_binary") == ["step1", "step2"]
  assert stages_of("wdm_histogram") == ["step2"]  # step 1 reused, not retrained
  assert stages_of("kurtosis_only") == ["step1", "step2"]  # kurtosis changes step 1

  shared = checkpoint.list_checkpoints(workdir / "plain_binary_seed0")["step1"][-1]
  _, config = checkpoint.read_meta(checkpoint.list_checkpoints(workdir / "wdm_histogram_seed0")["step2"][-1])
  step1_folder = os.path.dirname(shared.path)
  assert config.init_from == step1_folder and config.teacher == step1_folder
  assert config.loss.wdm.form == "histogram" and config.loss.kurtosis.weight == 0.0
