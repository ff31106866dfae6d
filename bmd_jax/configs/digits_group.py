"""A run group on the built-in digits: BD-BNN, kurtosis-only, WDM-only and plain side by side
in one program (docs/RUN_GROUPS.md), a minute's run on a CPU and the tests' group:

    python -m bmd_jax.main --config=bmd_jax/configs/digits_group.py --workdir=runs/digits_group

Each run's folder is runs/digits_group/<run>/ (bdbnn_s0, kurtosis_only_s0, wdm_only_s0,
plain_s0). The steps run on the device input path (a run group needs it).
"""

from bmd_jax.infra.config_files import load_sibling, use_two_steps
from bmd_jax.configs._group_runs import ablation_runs


def get_config():
  config = load_sibling(__file__, "default.py")
  config.input_path = "device"
  config.num_epochs = 5.0
  config.eval_every_epochs = 5.0
  config.model.input_quantizer = "ede"
  config.model.kernel_quantizer = "ede"
  use_two_steps(config, {"ce": {"weight": 1.0}, "kd": {"weight": 0.9},
                         "wdm": {"weight": 1.0, "reduction": "weight_sum"}})
  config.runs = ablation_runs(seeds=(0,))
  return config
