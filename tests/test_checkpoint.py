"""checkpoint.py on small hand-written workdirs: finding, choosing, reading and checking
checkpoints as the tools do, without training a run."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from bmd_jax.tools import analyze
from bmd_jax.infra import checkpoint
from bmd_jax import models
from bmd_jax.configs import default

IMAGE_SHAPE = (8, 8, 1)


def _variables(config, seed=0):
  model = models.create_model(config, 10)
  params, batch_stats = models.initialized(jax.random.PRNGKey(seed), model, IMAGE_SHAPE)
  return jax.device_get({"params": params, "batch_stats": batch_stats})


def _write_stage(workdir, stage, config, steps=(3,)):
  """Checkpoints of `stage` as training writes them (state and meta; no data iterator)."""
  manager = checkpoint.create_manager(str(workdir), stage)
  meta = {"stage": stage, "config": config.to_json()}
  for step in steps:
    checkpoint.save(manager, step, _variables(config, step), None, meta, wait=True)
  manager.close()


def _two_stage_workdir(tmp_path):
  config = default.get_config()
  config.stages = "step1,step2"
  step1 = config.copy_and_resolve_references()
  step1.model.precision = "binary_activations"
  _write_stage(tmp_path, "step1", step1, steps=(3, 5))
  _write_stage(tmp_path, "step2", config)
  return config


@pytest.mark.slow  # over 4 s on 2 cores: the fast tier stays under 3 minutes
def test_checkpoints_are_listed_chosen_and_read(tmp_path):
  config = _two_stage_workdir(tmp_path)
  found = checkpoint.list_checkpoints(tmp_path)
  assert {s: [c.step for c in cs] for s, cs in found.items()} == {"step1": [3, 5], "step2": [3]}
  assert checkpoint.stage_order(str(tmp_path)) == ["step1", "step2"]
  newest = checkpoint.choose_checkpoint(str(tmp_path))
  assert (newest.stage, newest.step) == ("step2", 3)
  assert checkpoint.choose_checkpoint(str(tmp_path), precision="binary_activations").step == 5
  assert checkpoint.read_meta(newest)[0] == "step2"
  variables = checkpoint.read_variables(newest)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, _variables(config, 3))
  with pytest.raises(ValueError, match="has no checkpoint at step 4; steps: \\[3, 5\\]"):
    checkpoint.choose_checkpoint(str(tmp_path), "step1", 4)


def test_a_workdir_without_checkpoints_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="must be a training run's workdir"):
    checkpoint.list_checkpoints(tmp_path / "nothing")


@pytest.mark.slow  # over 4 s on 2 cores: the fast tier stays under 3 minutes
def test_init_from_of_other_shapes_is_named_as_init_from_by_analyze(tmp_path):
  config = default.get_config()
  other = config.copy_and_resolve_references()
  other.model.width = 32  # small_cnn is 64 wide by default
  _write_stage(tmp_path, "wide", other)
  config.init_from = "wide"
  _write_stage(tmp_path, "step2", config)
  with pytest.raises(ValueError) as error:
    analyze.stage_weights(str(tmp_path), "step2")
  assert "init_from checkpoint" in str(error.value) and "teacher" not in str(error.value)


def test_loaded_variables_name_what_was_loaded(tmp_path):
  config = default.get_config()
  _write_stage(tmp_path, "step1", config)
  expected = _variables(config)
  expected["params"]["extra"] = {"kernel": np.zeros(3)}
  with pytest.raises(ValueError, match="distillation teacher checkpoint .* lacks parameter"):
    checkpoint.load_variables(checkpoint.stage_directory(tmp_path, "step1"), expected,
                              "distillation teacher checkpoint")


def test_checkpoint_source_resolves_a_stage_name_or_a_folder(tmp_path):
  config = default.get_config()
  _write_stage(tmp_path, "step1", config)
  folder = str(checkpoint.stage_directory(tmp_path, "step1"))
  assert checkpoint.checkpoint_source("step1", tmp_path, "step2", "the teacher") == folder
  assert checkpoint.checkpoint_source(folder, "/elsewhere", "step2", "the teacher") == folder
  with pytest.raises(FileNotFoundError, match="run that stage first"):
    checkpoint.checkpoint_source("step0", tmp_path, "step2", "the teacher")


def _restore_latest(workdir, config):
  manager = checkpoint.create_manager(str(workdir), "step1")
  try:
    return checkpoint.restore_latest(manager, checkpoint.abstract_like(_variables(config)), None)
  finally:
    manager.close()


def test_a_checkpoint_whose_arrays_differ_from_its_checksums_is_set_aside(tmp_path, caplog):
  config = default.get_config()
  _write_stage(tmp_path, "step1", config, steps=(3, 5))
  record = tmp_path / "checkpoints" / "step1" / "5" / "checksums" / "metadata"
  saved = json.loads(record.read_text())
  saved["arrays"]["params/conv1/latent_kernel"] = "0" * 64  # as if the array's bytes changed
  record.write_text(json.dumps(saved))
  with caplog.at_level(logging.WARNING, "bmd_jax"):
    state, _ = _restore_latest(tmp_path, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, state, _variables(config, 3))
  assert "params/conv1/latent_kernel differs from the checksum" in caplog.text
  assert (tmp_path / "checkpoints" / "step1" / "5.damaged").is_dir()
  with pytest.raises(checkpoint.ChecksumMismatchError, match="params/conv1/latent_kernel"):
    checkpoint.read_state(tmp_path / "checkpoints" / "step1" / "5.damaged" / "state")


def test_a_checkpoint_without_checksums_is_read_unverified(tmp_path, caplog):
  # Written before checkpoints held checksums (they are part of the save itself, so a finished
  # save of today never lacks them).
  config = default.get_config()
  _write_stage(tmp_path, "step1", config, steps=(3,))
  shutil.rmtree(tmp_path / "checkpoints" / "step1" / "3" / "checksums")
  with caplog.at_level(logging.INFO, "bmd_jax"):
    state, _ = _restore_latest(tmp_path, config)
    variables = checkpoint.read_variables(checkpoint.choose_checkpoint(tmp_path, "step1"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, state, _variables(config, 3))
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, _variables(config, 3))
  assert "no checksums" in caplog.text and "unverified" in caplog.text


def test_written_variables_are_checked_when_loaded(tmp_path):
  # write_variables is what convert.py writes: init_from and teachers load it.
  config = default.get_config()
  variables = _variables(config)
  checkpoint.write_variables(tmp_path / "converted", variables, 0)
  assert jax.tree_util.tree_structure(checkpoint.load_variables(
      tmp_path / "converted", variables, "init_from checkpoint")) == jax.tree_util.tree_structure(
          variables)
  record = tmp_path / "converted" / "0" / "checksums" / "metadata"
  saved = json.loads(record.read_text())
  saved["arrays"]["params/classifier/kernel"] = "0" * 64
  record.write_text(json.dumps(saved))
  with pytest.raises(checkpoint.ChecksumMismatchError, match="params/classifier/kernel"):
    checkpoint.load_variables(tmp_path / "converted", variables, "init_from checkpoint")


def test_a_state_with_empty_optimizer_nodes_is_saved_and_verified(tmp_path):
  """Weight decay puts an empty node (optax's EmptyState) in the optimizer state, as in the
  CIFAR-10 recipe: the checksums are still written and checked."""
  import optax
  params = _variables(default.get_config())["params"]
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = {"params": params, "opt_state": tx.init(params)}
  manager = checkpoint.create_manager(str(tmp_path), "train")
  checkpoint.save(manager, 1, state, None, {"stage": "train"}, wait=True)
  manager.close()
  restored = checkpoint.read_state(tmp_path / "checkpoints" / "train" / "1" / "state")
  np.testing.assert_array_equal(restored["params"]["conv1"]["latent_kernel"],
                                params["conv1"]["latent_kernel"])
