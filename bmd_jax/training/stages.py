"""The stages of a run: the two-step BD-BNN recipe as config overrides.

A config lists the stages to run in order (``stages = "step1,step2"``) and, in
``stage_overrides.<name>``, the fields each stage changes (precision, schedule, loss
weights, ``init_from``, ``teacher``). A stage's config is the top-level config with its
overrides applied. ``--config.stages=step2`` runs step 2 alone; it then takes step 1's
results from the workdir's checkpoints (or from paths given by ``init_from``/``teacher``).

``init_from`` and ``teacher`` name an earlier stage or a checkpoint folder; '' means none
(checkpoint.checkpoint_source resolves them).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from bmd_jax.infra.config_checks import ConfigValueError


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  config: ml_collections.ConfigDict


def stage_list(config: ml_collections.ConfigDict) -> list[Stage]:
  """The stages to run, in order, each with its resolved config."""
  names = [n.strip() for n in config.stages.split(",") if n.strip()]
  if not names:
    raise ConfigValueError("config.stages names no stage; e.g. --config.stages=step1,step2")
  overrides = config.get("stage_overrides", ml_collections.ConfigDict())
  result = []
  for name in names:
    if name not in overrides:
      raise ConfigValueError(f"stage {name!r} has no entry in config.stage_overrides; "
                             f"defined stages: {sorted(overrides.keys())}")
    stage_config = ml_collections.ConfigDict(config.to_dict())
    stage_config.update(overrides[name].to_dict())
    result.append(Stage(name, stage_config))
  return result
