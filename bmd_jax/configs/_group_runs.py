"""The run list of the group recipes (cifar10_group.py, digits_group.py; docs/RUN_GROUPS.md)."""


def ablation_runs(seeds=(0,)) -> tuple[dict, ...]:
  """BD-BNN and its ablations on a two-step recipe (config_files.use_two_steps), each seed:
  bdbnn (as the recipe), kurtosis_only (no WDM in step 2), wdm_only (no kurtosis term) and
  plain (neither; output distillation kept, as config_files.without_bd_bnn_terms does)."""
  no_wdm = {"stage_overrides.step2.loss.wdm.weight": 0.0}
  no_kurtosis = {"loss.kurtosis.weight": 0.0}
  variants = {"bdbnn": {}, "kurtosis_only": no_wdm, "wdm_only": no_kurtosis,
              "plain": {**no_wdm, **no_kurtosis}}
  return tuple({"name": f"{variant}_s{seed}", "overrides": {"seed": seed, **overrides}}
               for seed in seeds for variant, overrides in variants.items())
