"""Faults inside and around the training loop: every way out keeps a true, readable checkpoint
(issue 15)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.infra import checkpoint
from bmd_jax.training import train

pytestmark = pytest.mark.slow  # each test trains a few steps end to end


def _steps(workdir, stage="train"):
  folder = os.path.join(workdir, "checkpoints", stage)
  return sorted(int(s) for s in os.listdir(folder) if s.isdigit())


def _leftovers(workdir, stage="train"):
  return [s for s in os.listdir(os.path.join(workdir, "checkpoints", stage))
          if not s.isdigit()]


def _params(workdir, step, stage="train"):
  return checkpoint.read_state(
      os.path.join(workdir, "checkpoints", stage, str(step), "state"))["params"]


def test_diverging_run_keeps_a_finished_finite_checkpoint_and_names_it(digits_config,
                                                                     tmp_path, monkeypatch):
  # The case: the save at step 3 is in flight when the loss at step 5 turns
  # non-finite, and the state saved must itself be finite. (The issue diverged with SGD at
  # lr 1e6; since the mean-|W| gradient follows ReActNet's, that run stays finite, so a NaN
  # learning rate from the 4th update on makes the same sequence.)
  digits_config.optimizer = "sgd"
  digits_config.checkpoint_every_steps = 3
  digits_config.log_every_steps = 5
  create = train.create_learning_rate_fn

  def nan_from_step_3(config, steps_per_epoch):
    schedule = create(config, steps_per_epoch)
    return lambda step: jnp.where(step >= 3, jnp.nan, schedule(step))

  monkeypatch.setattr(train, "create_learning_rate_fn", nan_from_step_3)
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(digits_config, str(tmp_path))
  assert not _leftovers(tmp_path), _leftovers(tmp_path)
  steps = _steps(tmp_path)
  message = str(error.value)
  assert steps == [3], steps  # the save in flight was finished, not lost
  assert f"step {steps[-1]} in" in message, message
  for p in jax.tree_util.tree_leaves(_params(tmp_path, steps[-1])):
    assert np.isfinite(p).all()


def _fill_disk_from_step(monkeypatch, first_full_step):
  """Orbax's save raises ENOSPC from `first_full_step` on, as a full disk does."""
  import errno
  import orbax.checkpoint as ocp

  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= first_full_step:
      raise OSError(errno.ENOSPC, "No space left on device",
                    os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp"))
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_full_disk_names_the_path_and_the_checkpoint_kept(digits_config, tmp_path,
                                                         monkeypatch):
  digits_config.checkpoint_every_steps = 5
  _fill_disk_from_step(monkeypatch, 10)
  with pytest.raises(checkpoint.CheckpointWriteError) as error:
    train.train_and_evaluate(digits_config, str(tmp_path))
  message = str(error.value)
  assert "disk is full" in message and "10.orbax-checkpoint-tmp" in message, message
  assert "step 5 in" in message and "\n" not in message, message
  assert _steps(tmp_path) == [5]
