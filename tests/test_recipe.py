"""The two-step recipe, checkpoints, resume after SIGKILL, SIGTERM and the NaN guard."""

import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from bmd_jax.infra import checkpoint
from bmd_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _two_stage(config):
  config.model.kernel_quantizer = "ede"  # t changes every epoch: must not recompile
  config.num_train_steps = 44  # two epochs of 22 steps
  config.eval_every_epochs = 100.0
  config.stages = "step1,step2"
  config.stage_overrides = ml_collections.ConfigDict({
      "step1": {"model": {"precision": "binary_activations"}},
      "step2": {"model": {"precision": "binary"}, "init_from": "step1", "teacher": "step1",
                "learning_rate": 0.0,
                "loss": {"wdm": {"weight": 1.0}, "kd": {"weight": 1.0}, "ce": {"weight": 0.0}}},
  })
  return config


@pytest.mark.slow
def test_two_stages_end_to_end(digits_config, tmp_path):
  results = train.train_and_evaluate(_two_stage(digits_config), str(tmp_path))
  step1 = jax.device_get(results["step1"]["state"].params)
  step2 = jax.device_get(results["step2"]["state"].params)
  # With a zero learning rate, step 2 ends where it starts: at step 1's parameters.
  jax.tree_util.tree_map(np.testing.assert_array_equal, step1, step2)
  # The teacher (step 1's checkpoint) is bitwise unchanged by step 2.
  expected = {"params": step1, "batch_stats": results["step1"]["state"].batch_stats}
  teacher = checkpoint.load_variables(str(tmp_path / "checkpoints" / "step1"), expected,
                                      "WDM teacher checkpoint")
  jax.tree_util.tree_map(np.testing.assert_array_equal, step1, teacher["params"])
  for stage in ("step1", "step2"):
    assert results[stage]["train_step_compilations"] == 1
  text = open(tmp_path / "metrics.jsonl").read()
  assert '"stage": "step2"' in text and '"train/wdm": 0.0' not in text.split("step2")[-1]


def test_stage_without_its_teacher_says_what_to_run(digits_config, tmp_path):
  config = _two_stage(digits_config)
  config.stages = "step2"
  with pytest.raises(FileNotFoundError, match="run that stage first"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_teacher_with_other_shapes_is_rejected(digits_config, tmp_path):
  config = _two_stage(digits_config)
  config.stages = "step1"
  train.train_and_evaluate(config, str(tmp_path))
  config.stages = "step2"
  config.model.width = 32
  with pytest.raises(ValueError, match="shape"):
    train.train_and_evaluate(config, str(tmp_path))


# The interrupted runs: 120 steps (5.5 epochs of 22), saved every 5. Once step 10's checkpoint
# appears, 110 steps and 22 saves (about 6 s on 2 cores) are left before the run could end, so
# it is still alive when interrupted.
STEPS = 120


def _cli(workdir, *overrides):
  return [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
          f"--workdir={workdir}", f"--config.num_train_steps={STEPS}",
          "--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
          "--config.eval_every_epochs=100", *overrides]


def _start_and_wait_for_checkpoint(workdir, step=10):
  proc = subprocess.Popen(_cli(workdir), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  ckpt = os.path.join(workdir, "checkpoints", "train", str(step))
  deadline = time.time() + 240
  while not os.path.isdir(ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  return proc


def _final_params(workdir):
  return _final_params_at(workdir, STEPS)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  # The parameters do not depend on when checkpoints are written (checkpoint_every_steps and
  # log_every_steps may change on resume): the straight run saves at epoch ends only.
  subprocess.run(_cli(straight, f"--config.checkpoint_every_steps={STEPS}",
                      f"--config.log_every_steps={STEPS}"),
                 cwd=REPO, check=True, capture_output=True, timeout=300)
  proc = _start_and_wait_for_checkpoint(killed)
  proc.kill()
  proc.wait()
  assert not os.path.isdir(os.path.join(killed, "checkpoints", "train", str(STEPS)))
  result = subprocess.run(_cli(killed), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert "resumed from step" in result.stderr
  jax.tree_util.tree_map(np.testing.assert_array_equal, _final_params(straight),
                         _final_params(killed))


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  proc = _start_and_wait_for_checkpoint(workdir)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 75, out[-2000:]  # EX_TEMPFAIL: requeue, not "finished"
  assert "SIGTERM received" in out
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", "train"))
           if s.isdigit()]
  assert 10 <= max(steps) < STEPS


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_checkpoint(digits_config, tmp_path):
  digits_config.num_train_steps = 10
  digits_config.checkpoint_every_steps = 5
  train.train_and_evaluate(digits_config, str(tmp_path))
  digits_config.num_train_steps = 40
  digits_config.learning_rate = float("nan")
  digits_config.resume_despite_config_change = True  # a longer, diverging run on purpose
  with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 1[1-5]"):
    train.train_and_evaluate(digits_config, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints" / "train") if s.isdigit())
  assert steps[-1] == 10
  params = _final_params_at(tmp_path, 10)
  assert all(np.isfinite(p).all() for p in jax.tree_util.tree_leaves(params))


def _final_params_at(workdir, step):
  return checkpoint.read_state(
      os.path.join(workdir, "checkpoints", "train", str(step), "state"))["params"]
