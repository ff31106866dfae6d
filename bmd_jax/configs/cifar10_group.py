"""CIFAR-10 BD-BNN and its ablations as one run group (docs/RUN_GROUPS.md): cifar10.py's
recipe, both steps, trained side by side in one program for two seeds:

    python -m bmd_jax.main --config=bmd_jax/configs/cifar10_group.py --workdir=runs/c10_group

Runs (each an ordinary run folder runs/c10_group/<run>/): bdbnn_s<seed> (the recipe),
kurtosis_only_s<seed> (no WDM in step 2), wdm_only_s<seed> (no kurtosis term) and
plain_s<seed> (neither, as cifar10_baseline.py), for seeds 0 and 1. Other seeds or fewer
variants: a recipe of your own that calls ablation_runs or lists its runs.
"""

from bmd_jax.infra.config_files import load_sibling
from bmd_jax.configs._group_runs import ablation_runs


def get_config():
  config = load_sibling(__file__, "cifar10.py")
  config.input_path = "device"  # a group's steps make their batches on the device
  config.runs = ablation_runs(seeds=(0, 1))
  return config
