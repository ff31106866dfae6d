"""Configs stored before 2026-11-28 held the loss options as flat fields (loss.kurtosis_weight);
today's hold one block per term (loss.kurtosis.weight). Old checkpoints and exports stay readable:
config_files.upgraded nests them, checked here against a flattening written independently."""

import json

import pytest

from bmd_jax.infra import checkpoint, config_files
from bmd_jax.core import objective


def _flat_loss(loss: dict) -> dict:
  """The old layout of a loss block, written out: {term: {option: v}} -> {term_option: v}."""
  return {f"{term}_{option}": value for term, block in loss.items()
          for option, value in block.items()}


def _as_stored_before(config) -> dict:
  """config.to_json() as a checkpoint written before the change holds it."""
  stored = json.loads(config.to_json())
  stored["loss"] = _flat_loss(stored["loss"])
  for stage in (stored.get("stage_overrides") or {}).values():
    if "loss" in stage:
      stage["loss"] = _flat_loss(stage["loss"])
  return stored


@pytest.mark.parametrize("name", ["default.py", "cifar10.py", "imagenet_bdbnn.py:diffkurt"])
def test_an_old_stored_config_is_upgraded_to_todays(name):
  path, _, variant = name.partition(":")
  config = config_files.load(path, *filter(None, [variant]))
  old = _as_stored_before(config)
  assert "kurtosis_weight" in old["loss"]  # the flattening did flatten
  assert config_files.upgraded(old) == json.loads(config.to_json())
  assert config_files.upgraded(json.loads(config.to_json())) == json.loads(config.to_json())


def test_upgrading_leaves_the_stored_dict_as_it_was():
  old = {"loss": {"kd_weight": 0.9}, "stage_overrides": {"s": {"loss": {"wdm_form": "x"}}}}
  copy = json.loads(json.dumps(old))
  assert config_files.upgraded(old)["stage_overrides"]["s"]["loss"] == {"wdm": {"form": "x"}}
  assert old == copy


def test_an_old_checkpoint_is_compared_and_read_in_todays_layout(tmp_path):
  config = config_files.load("configs/cifar10.py")
  meta = {"stage": "step2", "config": json.dumps(_as_stored_before(config))}
  assert checkpoint.check_resume_config(meta, config, "old") == []
  config.loss.kurtosis.weight = 0.5
  with pytest.raises(checkpoint.ConfigChangedError, match=r"loss\.kurtosis\.weight: 1\.0 in the "
                                                          r"checkpoint, 0\.5 now"):
    checkpoint.check_resume_config(meta, config, "old")

  (tmp_path / "meta").mkdir()
  (tmp_path / "meta" / "metadata").write_text(json.dumps(meta))
  stage, read = checkpoint.read_meta(checkpoint.Checkpoint("step2", 1, str(tmp_path)))
  assert stage == "step2" and read.loss.kurtosis.weight == 1.0
  assert read.stage_overrides.step2.loss.wdm.weight == 1.0


def test_an_old_field_in_a_loss_config_is_refused_with_the_layout():
  config = config_files.load("configs/default.py")
  objective.check_blocks(config.loss)
  config.loss.unlock()
  config.loss.kurtosis_weight = 0.0
  with pytest.raises(ValueError, match=r"loss\.kurtosis_weight: .*loss\.kurtosis\.weight"):
    objective.check_blocks(config.loss)


@pytest.mark.parametrize("field, new", [("loss.kd_weight", "loss.kd.weight"),
                                        ("stage_overrides.step2.loss.wdm_include_shortcuts",
                                         "stage_overrides.step2.loss.wdm.include_shortcuts"),
                                        ("model.kernel_quantizer", None),
                                        ("loss.kurtosis.weight", None)])
def test_the_new_name_of_an_old_command_line_field(field, new):
  assert config_files.renamed_loss_field(field) == new


def test_a_stored_config_from_before_the_wdm_reduction_reads_as_the_old_one():
  """A CIFAR-10 step-2 checkpoint written before loss.wdm.reduction existed trained with
  'channel_mean'; today's recipe says 'weight_sum', so resuming it must be refused (a field
  only one side has would otherwise not be compared), and allowed under the old value."""
  from bmd_jax.training import stages
  from bmd_jax.configs import cifar10
  step2 = stages.stage_list(cifar10.get_config())[1].config
  stored = json.loads(step2.to_json())
  del stored["loss"]["wdm"]["reduction"]
  del stored["loss"]["kurtosis"]["view"]
  meta = {"config": json.dumps(stored)}
  with pytest.raises(checkpoint.ConfigChangedError,
                     match=r"loss\.wdm\.reduction: 'channel_mean' in the checkpoint, "
                           r"'weight_sum' now"):
    checkpoint.check_resume_config(meta, step2, "step 100")
  step2.loss.wdm.reduction = "channel_mean"
  assert checkpoint.check_resume_config(meta, step2, "step 100") == []
