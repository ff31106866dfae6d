"""The run list of issue 27's experiment (docs/EXPERIMENT.md), as run groups (config.runs).

Each wave is one group: its runs differ only in traced values (run_group_config.TRACED_FIELDS),
so they train side by side in one program. Runs are named <variant>_s<seed>, which
`python -m bmd_jax.tools.compare` groups by variant.
"""

from __future__ import annotations


def per_layer_targets(stage_sizes) -> dict:
  """The plan's per-layer kurtosis targets for a CIFAR ResNet (two regularized convs a block,
  in definition order): lower deeper, the shape of the BD-BNN release's ImageNet `diffkurt`
  lists; a choice of the plan, not the release's (docs/EXPERIMENT.md)."""
  convs = [2 * blocks for blocks in stage_sizes]
  step1 = (1.4,) * (convs[0] + convs[1]) + (1.2,) * convs[2]
  step2 = (1.8,) * convs[0] + (1.4,) * convs[1] + (1.2,) * convs[2]
  return {"stage_overrides.step1.loss.kurtosis.targets": step1,
          "stage_overrides.step2.loss.kurtosis.targets": step2}


def first_wave_variants(stage_sizes) -> dict[str, dict]:
  """The seven two-step variants of the comparison, as overrides of cifar10.py (BD-BNN)."""
  no_wdm = {"stage_overrides.step2.loss.wdm.weight": 0.0}
  no_kurtosis = {"loss.kurtosis.weight": 0.0}
  return {
      "plain": {**no_wdm, **no_kurtosis},
      "kurtosis_only": no_wdm,
      "wdm_only": no_kurtosis,
      "bdbnn": {},
      "bdbnn_target1.2": {"loss.kurtosis.target": 1.2},
      "bdbnn_target1.4": {"loss.kurtosis.target": 1.4},
      "bdbnn_per_layer": per_layer_targets(stage_sizes),
  }


def runs(variants: dict[str, dict], seeds) -> tuple[dict, ...]:
  """config.runs: every variant for every seed."""
  return tuple({"name": f"{variant}_s{seed}", "overrides": {"seed": seed, **overrides}}
               for seed in seeds for variant, overrides in variants.items())
