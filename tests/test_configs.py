"""Every config file loads, names a registered model, and its stages resolve."""

import glob
import os

import pytest

from bmd_jax import models
from bmd_jax.training import stages
from bmd_jax.infra.config_files import load_sibling

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bmd_jax",
                       "configs")
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.py"))
               if not os.path.basename(p).startswith("_"))


@pytest.mark.parametrize("name", FILES)
def test_config_loads_and_its_stages_resolve(name):
  config = load_sibling(os.path.join(CONFIGS, "x.py"), name)
  assert config.model.name in models.list_models()
  for stage in stages.stage_list(config):
    assert stage.config.model.precision in ("full", "binary_activations", "binary")
    if stage.config.teacher:
      assert stage.config.model.precision == "binary"


@pytest.mark.parametrize("name", [f for f in FILES if f.endswith("_baseline.py")])
def test_baselines_drop_kurtosis_and_wdm_only(name):
  base = load_sibling(os.path.join(CONFIGS, "x.py"), name.replace("_baseline", ""))
  baseline = load_sibling(os.path.join(CONFIGS, "x.py"), name)
  for full, ablated in zip(stages.stage_list(base), stages.stage_list(baseline)):
    assert ablated.config.loss.kurtosis.weight == ablated.config.loss.wdm.weight == 0.0
    assert ablated.config.loss.kd.weight == full.config.loss.kd.weight
    assert ablated.config.num_epochs == full.config.num_epochs
  assert any(s.config.loss.kurtosis.weight > 0 for s in stages.stage_list(base))


def test_vgg_small_config_has_irnets_schedule_in_every_stage():
  # IR-Net's CIFAR-10/VGG-Small/main.py: lr 0.007, 300 epochs, T_min, T_max = 1e-1, 1e1.
  config = load_sibling(os.path.join(CONFIGS, "x.py"), "cifar10_vgg_small.py")
  for stage in stages.stage_list(config):
    c = stage.config
    assert c.model.name == "vgg_small" and c.optimizer == "sgd" and c.lr_schedule == "cosine"
    assert (c.learning_rate, c.num_epochs, c.batch_size) == (0.007, 300.0, 128)
    assert (c.estimators.ede_t_min, c.estimators.ede_t_max) == (0.1, 10.0)
    assert c.model.kernel_quantizer == c.model.input_quantizer == "ede"
