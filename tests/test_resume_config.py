"""Resuming a workdir: its checkpoint's config is compared with the one resuming it, and a
damaged newest checkpoint falls back to an older one (issue 15, item 2 and the unclear list)."""

import glob
import json
import logging
import os
import shutil

import pytest

from bmd_jax.infra import checkpoint
from bmd_jax.training import train
from step_setup import short_digits_config

pytestmark = pytest.mark.slow  # the module trains a 10-step run first


def _ten_step_config():
  return short_digits_config(10, 5, checkpoint_every_steps=5)


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ten_steps"))
  train.train_and_evaluate(_ten_step_config(), workdir)
  return workdir


@pytest.fixture
def finished_run(_trained_once, tmp_path):
  """(config, workdir) of a 10-step digits run with checkpoints at steps 5 and 10: a copy of
  one run per test, which the test may resume, damage or refuse."""
  workdir = str(tmp_path / "run")
  shutil.copytree(_trained_once, workdir)
  return _ten_step_config(), workdir


def test_a_field_on_the_allowed_list_may_change(finished_run, caplog):
  config, workdir = finished_run
  config.log_every_steps = 2
  config.eval_every_epochs = 3.0
  config.checkpoint_keep = 5
  with caplog.at_level(logging.INFO, "bmd_jax"):
    train.train_and_evaluate(config, workdir)
  assert "already complete" in caplog.text and "changed config" not in caplog.text


@pytest.mark.parametrize("field, value", [("batch_size", 32), ("num_train_steps", 20),
                                          ("model.precision", "full")])
def test_a_field_outside_the_list_is_refused_with_the_fix(finished_run, field, value):
  config, workdir = finished_run
  section, _, name = field.rpartition(".")
  setattr(config[section] if section else config, name, value)
  with pytest.raises(checkpoint.ConfigChangedError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert field in message and "--workdir" in message, message
  assert "resume_despite_config_change=True" in message
  # The workdir's record is still the run's, not the refused config's (issue 29, item 3).
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f) == json.loads(_ten_step_config().to_json())


def test_a_change_made_on_purpose_is_logged(finished_run, caplog):
  config, workdir = finished_run
  config.learning_rate = 1e-3
  config.resume_despite_config_change = True
  with caplog.at_level(logging.WARNING, "bmd_jax"):
    train.train_and_evaluate(config, workdir)
  assert "on purpose" in caplog.text and "learning_rate" in caplog.text


def test_another_model_forced_is_a_clear_error(finished_run):
  config, workdir = finished_run
  config.model.name = "resnet20"
  config.resume_despite_config_change = True
  with pytest.raises(checkpoint.ConfigChangedError, match="new --workdir"):
    train.train_and_evaluate(config, workdir)


def test_fields_unknown_to_an_old_checkpoint_are_not_compared():
  saved = {"batch_size": 64, "model": {"name": "small_cnn"}, "removed_since": 1}
  current = {"batch_size": 64, "model": {"name": "small_cnn", "added_since": 2},
             "resume_despite_config_change": False}
  assert checkpoint.config_differences(saved, current) == []
  assert checkpoint.config_differences(saved, {**current, "batch_size": 8}) == [
      "batch_size: 64 in the checkpoint, 8 now"]


def test_a_checkpoint_from_before_the_barrier_default_resumes():
  # store_binary_input became the default (2026-11-28); it changes the schedule, not values.
  saved = {"model": {"name": "small_cnn", "store_binary_input": False}}
  current = {"model": {"name": "small_cnn", "store_binary_input": True}}
  assert checkpoint.config_differences(saved, current) == []


def _damage(step_dir, how):
  if how == "truncated data":
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
      with open(path, "r+b") as f:
        f.truncate(max(0, os.path.getsize(path) // 3))
  else:
    os.remove(os.path.join(step_dir, "meta", "metadata"))


@pytest.mark.parametrize("how", ["truncated data", "missing metadata"])
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(finished_run, caplog, how):
  config, workdir = finished_run
  folder = os.path.join(workdir, "checkpoints", "train")
  _damage(os.path.join(folder, "10"), how)
  with caplog.at_level(logging.INFO, "bmd_jax"):
    train.train_and_evaluate(config, workdir)
  assert os.path.join(folder, "10") in caplog.text and "damaged" in caplog.text
  assert "resumed from step 5" in caplog.text
  assert os.path.isdir(os.path.join(folder, "10.damaged"))
  assert checkpoint.finished_steps(folder)[-1] == 10  # written again


def test_no_readable_checkpoint_is_refused_naming_the_folders(finished_run):
  config, workdir = finished_run
  folder = os.path.join(workdir, "checkpoints", "train")
  for step in ("5", "10"):
    _damage(os.path.join(folder, step), "missing metadata")
  with pytest.raises(checkpoint.CheckpointDamagedError) as error:
    train.train_and_evaluate(config, workdir)
  assert os.path.join(folder, "5") in str(error.value) and "Move" in str(error.value)


def test_a_checkpoint_with_the_old_flat_loss_fields_resumes(finished_run, caplog):
  """Configs stored before 2026-11-28 held loss.kurtosis_weight and the like, not blocks."""
  config, workdir = finished_run
  metadata = glob.glob(os.path.join(workdir, "checkpoints", "*", "*", "meta", "metadata"))
  assert metadata
  for path in metadata:
    with open(path) as f:
      meta = json.load(f)
    stored = json.loads(meta["config"])
    stored["loss"] = {f"{term}_{option}": value for term, block in stored["loss"].items()
                      for option, value in block.items()}
    meta["config"] = json.dumps(stored)
    with open(path, "w") as f:
      json.dump(meta, f)
  with caplog.at_level(logging.INFO, "bmd_jax"):
    train.train_and_evaluate(config, workdir)
  assert "already complete" in caplog.text
  config.loss.kurtosis.weight = 0.25
  with pytest.raises(checkpoint.ConfigChangedError, match=r"loss\.kurtosis\.weight"):
    train.train_and_evaluate(config, workdir)
