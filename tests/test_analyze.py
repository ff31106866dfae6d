"""python -m bmd_jax.analyze on a short digits run: its files, and its table against losses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bmd_jax import export, losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_analyze_writes_figures_and_the_kurtosis_of_the_checkpoint(digits_run, tmp_path):
  config, workdir = digits_run
  out = str(tmp_path / "analysis")
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.analyze", f"--workdir={workdir}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  for name in ("hist_train.png", "kurtosis.png", "analysis.json", "analysis.md"):
    path = os.path.join(out, name)
    assert os.path.getsize(path) > 0, name
  with open(os.path.join(out, "hist_train.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  with open(os.path.join(out, "analysis.json")) as f:
    record = json.load(f)
  variables = export.read_variables(export.choose_checkpoint(workdir))
  expected = {k.removesuffix("/latent_kernel"): float(losses.kurtosis(w))
              for k, w in losses.binarized_kernels(variables["params"]).items()}
  got = {r["layer"]: r["kurtosis_end"] for r in record["layers"] if r["stage"] == "train"}
  assert set(got) == set(expected) == {"conv0", "conv1", "conv2"}
  for layer, value in expected.items():
    assert got[layer] == pytest.approx(value, rel=1e-6), layer
  for r in record["layers"]:
    assert 0 <= r["flip_ratio"] <= 1 and 0 <= r["near_zero_end"] <= 1
    # The kurtosis term (target 1.8) moved every layer's kurtosis from its Gaussian-like start.
    assert r["kurtosis_start"] > 2.0 and abs(r["kurtosis_end"] - 1.8) < abs(
        r["kurtosis_start"] - 1.8)
  assert record["stages"]["train"]["start_from"].startswith("initialization")
  assert "| train | conv0 |" in result.stdout
  del config
  assert np.isfinite([r["kurtosis_end"] for r in record["layers"]]).all()
