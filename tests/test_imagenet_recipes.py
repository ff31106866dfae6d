"""The ImageNet recipe configs: ReActNet's (distillation only, from a real ResNet-34, in both
steps) and the BD-BNN release's (its per-layer kurtosis targets fit ResNet-18's 19 layers)."""

import os

import pytest

from bmd_jax import models
from bmd_jax.core import objective
from bmd_jax.training import stages, train
from bmd_jax.infra.config_files import load_sibling

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bmd_jax",
                       "configs")


def load(name):
  return load_sibling(os.path.join(CONFIGS, "x.py"), name)


def test_reactnet_recipe_distils_from_a_real_resnet34_in_both_steps():
  config = load("imagenet_reactnet_recipe.py")
  for stage in stages.stage_list(config):
    c = stage.config
    assert c.loss.ce.weight == c.loss.kurtosis.weight == c.loss.wdm.weight == 0.0
    assert c.loss.kd.weight == 1.0 and not c.teacher
    assert c.distill_teacher_model.name == "resnet34_torchvision"
    assert c.model.name == "resnet18" and c.model.react
  step1, step2 = stages.stage_list(config)
  assert (step1.config.model.precision, step2.config.model.precision) == (
      "binary_activations", "binary")
  assert step2.config.init_from == "step1"
  assert (step1.config.weight_decay, step2.config.weight_decay) == (1e-5, 0.0)
  # Without the teacher's checkpoint the run stops before training, saying what to set.
  with pytest.raises(ValueError, match="distill_teacher"):
    train._check_teachers(step1.config, "step1")


@pytest.mark.parametrize("variant", ["", "diffkurt"])
def test_bdbnn_recipe(variant):
  from bmd_jax.configs import imagenet_bdbnn
  config = imagenet_bdbnn.get_config(variant)
  step1, step2 = stages.stage_list(config)
  assert step2.config.teacher == "step1" and not step2.config.distill_teacher
  assert (step2.config.loss.wdm.form, step2.config.loss.wdm.weight) == ("released", 200.0)
  assert (step2.config.loss.kd.weight, step2.config.loss.ce.weight) == (0.9, 0.0)
  model = models.get_model("resnet18", num_classes=10, widths=(8, 16, 32, 64), react=True)
  layers = models.kurtosis_layers(model, (64, 64, 3))
  for stage in (step1, step2):
    target = objective.kurtosis_targets(stage.config.loss.kurtosis, layers)
    assert len(target) == 19 if variant else target == 1.8
