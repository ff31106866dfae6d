"""The run lists of the group recipes (cifar10_group.py, digits_group.py, cifar10_experiment.py;
docs/RUN_GROUPS.md, docs/EXPERIMENT.md)."""


def runs(variants: dict[str, dict], seeds) -> tuple[dict, ...]:
  """config.runs: every variant (name: overrides) for every seed, named <variant>_s<seed>."""
  return tuple({"name": f"{variant}_s{seed}", "overrides": {"seed": seed, **overrides}}
               for seed in seeds for variant, overrides in variants.items())


def ablation_variants() -> dict[str, dict]:
  """BD-BNN and its ablations on a two-step recipe (config_files.use_two_steps): bdbnn (as the
  recipe), kurtosis_only (no WDM in step 2), wdm_only (no kurtosis term) and plain (neither;
  output distillation kept, as config_files.without_bd_bnn_terms does)."""
  no_wdm = {"stage_overrides.step2.loss.wdm.weight": 0.0}
  no_kurtosis = {"loss.kurtosis.weight": 0.0}
  return {"bdbnn": {}, "kurtosis_only": no_wdm, "wdm_only": no_kurtosis,
          "plain": {**no_wdm, **no_kurtosis}}


def ablation_runs(seeds=(0,)) -> tuple[dict, ...]:
  """The four ablation variants for each seed."""
  return runs(ablation_variants(), seeds)


def per_layer_targets(stage_sizes) -> dict:
  """Issue 27's per-layer kurtosis targets for a CIFAR ResNet (two regularized convs a block,
  in definition order): lower deeper, the shape of the BD-BNN release's ImageNet `diffkurt`
  lists; a choice of the plan, not the release's (docs/EXPERIMENT.md)."""
  convs = [2 * blocks for blocks in stage_sizes]
  step1 = (1.4,) * (convs[0] + convs[1]) + (1.2,) * convs[2]
  step2 = (1.8,) * convs[0] + (1.4,) * convs[1] + (1.2,) * convs[2]
  return {"stage_overrides.step1.loss.kurtosis.targets": step1,
          "stage_overrides.step2.loss.kurtosis.targets": step2}


def first_wave_variants(stage_sizes) -> dict[str, dict]:
  """Issue 27's seven two-step variants: the ablation's four, then BD-BNN's target sweep."""
  ablation = ablation_variants()
  return {**{name: ablation[name] for name in ("plain", "kurtosis_only", "wdm_only", "bdbnn")},
          "bdbnn_target1.2": {"loss.kurtosis.target": 1.2},
          "bdbnn_target1.4": {"loss.kurtosis.target": 1.4},
          "bdbnn_per_layer": per_layer_targets(stage_sizes)}
