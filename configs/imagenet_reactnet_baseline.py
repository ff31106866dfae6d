"""Ablation baseline for imagenet_reactnet.py: the same schedule and stages without BD-BNN's terms.

No kurtosis regularization and no weight distribution mimicking (output distillation, where
the recipe has it, stays), so a difference in accuracy is the two terms' doing.

    python -m bmd_jax.main --config=configs/imagenet_reactnet_baseline.py --workdir=runs/imagenet_reactnet_baseline
"""

from bmd_jax.config_files import load_sibling


def get_config():
  config = load_sibling(__file__, "imagenet_reactnet.py")
  config.loss.kurtosis_weight = 0.0
  config.loss.wdm_weight = 0.0
  for stage in config.stage_overrides.values():
    if "loss" in stage:
      stage.loss.wdm_weight = 0.0
      stage.loss.kurtosis_weight = 0.0
  return config
