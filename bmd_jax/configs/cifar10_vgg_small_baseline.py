"""Ablation baseline for cifar10_vgg_small.py: the same schedule and stages without kurtosis
and WDM.

    python -m bmd_jax.main --config=configs/cifar10_vgg_small_baseline.py --workdir=runs/c10_vgg_base
"""

from bmd_jax.infra.config_files import load_sibling, without_bd_bnn_terms


def get_config():
  return without_bd_bnn_terms(load_sibling(__file__, "cifar10_vgg_small.py"))
