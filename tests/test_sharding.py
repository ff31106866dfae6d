"""Sharding over devices and processes: equal results on 1 device, 8 devices, FSDP and 2 hosts.

Simulated CPU devices need XLA_FLAGS before jax is imported, so the multi-device checks run
in subprocesses (tests/sharding_check.py and the real command via launch/).

Tolerances: the 8-device step differs from the 1-device one only in float32 summation order:
loss to rtol 1e-6, batch statistics to atol 1e-5; parameters to atol 1e-4 after Adam steps of
lr 5e-3 (Adam divides by |g|, so a rounding-level change of a near-zero gradient moves its
parameter by up to a step: 1e-4 is 2% of one; measured: 7e-6, FSDP 2e-5).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from bmd_jax.infra import checkpoint
from bmd_jax.training import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS_ATOL, STATS_ATOL, LOSS_RTOL = 1e-4, 1e-5, 1e-6


def _env(devices: int) -> dict:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


@pytest.fixture(scope="module")
def eight_devices():
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharding_check.py")],
                          cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)


@pytest.mark.slow
def test_eight_devices_match_one_device(eight_devices):
  out = eight_devices
  # The batch is really split: 8 shards of 64 / 8 rows, one per device.
  assert out["batch_spec"] == "PartitionSpec('data',)" or out["batch_spec"] == "P('data',)"
  assert out["batch_shard_shapes"] == [[8, 8, 8, 1]]
  assert out["batch_shard_devices"] == 8
  assert out["replicated_param_specs"] == ["P()"] or out["replicated_param_specs"] == [
      "PartitionSpec()"]
  one, eight, _ = out["loss"]
  np.testing.assert_allclose(eight, one, rtol=LOSS_RTOL)
  assert out["stats_diff_8"] < STATS_ATOL
  # Full Adam steps agree to rounding; near-zero gradients (Adam's eps regime, see
  # sharding_check.update_regime_diff) may differ visibly, in a handful of elements at most.
  worst, soft_mismatches = out["params_diff_8"]
  assert worst < PARAMS_ATOL and soft_mismatches <= 5
  assert out["params_update_size"] > 40 * PARAMS_ATOL  # the step really moved the params


@pytest.mark.slow
def test_fsdp_shards_parameters_and_matches_replicated(eight_devices):
  specs = eight_devices["fsdp_param_specs"]
  assert "data" in specs["['conv1']['latent_kernel']"]
  assert "data" in specs["['classifier']['kernel']"]
  assert "data" not in specs["['bn1']['scale']"]  # small leaves stay whole
  assert eight_devices["fsdp_sharded_opt_leaves"] >= 2 * 5  # Adam's mu and nu follow
  _, eight, fsdp = eight_devices["loss"]
  np.testing.assert_allclose(fsdp, eight, rtol=LOSS_RTOL)
  assert eight_devices["stats_diff_fsdp"] < STATS_ATOL
  worst, soft_mismatches = eight_devices["params_diff_fsdp"]
  assert worst < PARAMS_ATOL and soft_mismatches <= 5


@pytest.mark.slow
def test_misfit_batch_and_mesh_errors_name_the_fix(eight_devices):
  errors = eight_devices["errors"]
  assert "batch_size=60 is not divisible by the 8 devices" in errors["batch"]
  assert "e.g. 56 or 64" in errors["batch"]
  assert "asks for 16 devices" in errors["mesh"] and "at most 8" in errors["mesh"]
  # And on this process's single device:
  with pytest.raises(ValueError, match="asks for 2 devices"):
    sharding.create_mesh(num_devices=2)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(7, mesh)  # one device divides anything


def test_fsdp_spec_picks_a_divisible_dimension():
  assert sharding.fsdp_spec((3, 3, 64, 128), 8, min_size=1) == jax.sharding.PartitionSpec(
      None, None, None, "data")
  assert sharding.fsdp_spec((3, 3, 12, 64), 8, min_size=1)[3] == "data"
  assert sharding.fsdp_spec((7, 9), 8, min_size=1) == jax.sharding.PartitionSpec()
  assert sharding.fsdp_spec((8,), 8) == jax.sharding.PartitionSpec()  # below min_size


def test_distributed_start_needs_count_and_id(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  assert sharding.initialize_distributed("off", "localhost:1234") is False
  with pytest.raises(ValueError, match="--num_processes and --process_id"):
    sharding.initialize_distributed("auto", "localhost:1234")
  with pytest.raises(ValueError, match="not in"):
    sharding.initialize_distributed("auto", "localhost:1234", 2, 2)
  with pytest.raises(ValueError, match="unknown distributed mode"):
    sharding.initialize_distributed("yes")


# --- two processes x four devices against one process x eight, with the real command -----

def _image_folder(root):
  """64 train images (a batch of 64 is the whole split, so the result does not depend on how
  the processes shard and shuffle it) and 18 eval images: shards of 9, in batches of 8 (the
  last one padded and masked) per process, against 16 + 2 in one process."""
  rng = np.random.default_rng(0)
  for split, per_class in (("train", [16] * 4), ("val", [5, 5, 4, 4])):
    for c, n in enumerate(per_class):
      os.makedirs(os.path.join(root, split, f"class{c}"))
      for i in range(n):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8) // (c + 1)
        Image.fromarray(pixels, "L").save(os.path.join(root, split, f"class{c}", f"{i}.png"))
  return root


def _command(workdir, data_dir):
  return [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
          f"--workdir={workdir}", "--config.num_train_steps=2", "--config.dataset=image_folder",
          f"--config.data_dir={data_dir}", "--config.batch_size=64",
          "--config.eval_batch_size=16", "--config.log_every_steps=1"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  data = _image_folder(str(tmp_path / "data"))
  multi, single = tmp_path / "multi", tmp_path / "single"
  env = dict(os.environ, PYTHONPATH=REPO, LOG_DIR=str(tmp_path / "logs"))
  env.pop("XLA_FLAGS", None)
  two = subprocess.Popen(
      [os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", "4", "--",
       *_command(multi, data)], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  one = subprocess.run(_command(single, data), cwd=REPO, env=_env(8), capture_output=True,
                       text=True, timeout=600)
  two_out, _ = two.communicate(timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  logs = "".join(open(os.path.join(tmp_path, "logs", f)).read()[-2000:]
                 for f in os.listdir(tmp_path / "logs"))
  assert two.returncode == 0, two_out[-3000:] + logs
  assert "process 1 of 2; 4 local devices of 8" in logs

  # Every process saved its part: the state once, a data-iterator position per process.
  step_dir = multi / "checkpoints" / "train" / "2"
  assert sorted(os.listdir(step_dir / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  restored = [checkpoint.read_state(str(d / "checkpoints/train/2/state")) for d in (multi, single)]
  for part in ("params", "batch_stats"):
    flat = [jax.tree_util.tree_leaves_with_path(r[part]) for r in restored]
    assert [k for k, _ in flat[0]] == [k for k, _ in flat[1]]
    for (key, a), (_, b) in zip(*flat):
      np.testing.assert_allclose(a, b, atol=PARAMS_ATOL, err_msg=jax.tree_util.keystr(key))
  assert int(restored[0]["step"]) == int(restored[1]["step"]) == 2

  # Only process 0 wrote metrics: one line per event, the same figures as one process.
  # (The bi-modality records at the stage's start and with each checkpoint aside.)
  records = [[r for r in map(json.loads, open(d / "metrics.jsonl"))
              if not any(k.startswith("bimodality/") for k in r)] for d in (multi, single)]
  assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == [1, 2, 2]
  for key in ("train/loss", "eval/loss", "eval/accuracy"):
    got = [r[key] for r in records[0] if key in r]
    want = [r[key] for r in records[1] if key in r]
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
