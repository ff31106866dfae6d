"""A run group's list: which runs train together and the values each one changes.

    config.runs = (
        {"name": "bdbnn_s0", "overrides": {"seed": 0}},
        {"name": "plain_s1", "overrides": {"seed": 1, "loss.kurtosis.weight": 0.0,
                                           "stage_overrides.step2.loss.wdm.weight": 0.0}})

Each run's config is the group's config with its overrides applied (dotted field names, also
under ``stage_overrides.<stage>.``) and without ``runs``: the config of an ordinary single run,
which its folder <workdir>/<name>/ records. The runs share one compiled program, so their
stages may differ only in the values that program takes as traced arguments (TRACED_FIELDS:
the seed, the learning rate's peak, the loss weights, the kurtosis target(s), EDE's schedule);
any other difference is refused with the field and the run.
"""

from __future__ import annotations

import re

import ml_collections

from bmd_jax.infra.config_checks import ConfigValueError

# The fields runs of a group may set apart: each one reaches the step as a traced value.
TRACED_FIELDS = ("seed", "learning_rate", "loss.<term>.weight", "loss.kurtosis.target",
                 "loss.kurtosis.targets", "estimators.ede_t_min", "estimators.ede_t_max")
_TRACED = re.compile("(?:" + "|".join(re.escape(f).replace("<term>", "[^.]+")
                                      for f in TRACED_FIELDS) + ")$")
_STAGE_PREFIX = re.compile(r"stage_overrides\.[^.]+\.")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_group(config) -> bool:
  return bool(config.get("runs"))


def traced_field(field: str) -> bool:
  """Whether `field` (dotted; also under stage_overrides.<stage>.) may differ between runs."""
  return bool(_TRACED.match(_STAGE_PREFIX.sub("", field, count=1)))


def run_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{run name: its resolved config} in the list's order; refuses a bad entry, and an
  override of a field that is not traced (overrides are the only way runs differ, so their
  stages then differ in traced values alone)."""
  runs = {}
  for index, entry in enumerate(config.runs):
    name, overrides = _entry(entry, index)
    if name in runs:
      raise ConfigValueError(f"config.runs names run {name!r} twice; give each run its own name")
    run = ml_collections.ConfigDict(config.to_dict())
    del run["runs"]  # what a single run's config holds
    for field, value in overrides.items():
      if not traced_field(field):
        raise ConfigValueError(
            f"run {name!r} overrides {field}, which runs of one group may not change (they share "
            f"one program); only {', '.join(TRACED_FIELDS)} may differ: train it as its own run")
      try:
        run.update_from_flattened_dict({field: value})
      except (KeyError, TypeError) as error:
        raise ConfigValueError(f"run {name!r}: override {field}={value!r} does not fit the "
                               f"config: {error}") from None
    runs[name] = run
  return runs


def _entry(entry, index: int) -> tuple[str, dict]:
  name = entry.get("name") if hasattr(entry, "get") else None
  if not isinstance(name, str) or not _NAME.match(name):
    raise ConfigValueError(f"config.runs[{index}] needs a 'name' usable as a folder name "
                           f"(letters, digits, '_', '.', '-'), got {entry!r}")
  overrides = entry.get("overrides") or {}
  unknown = sorted(set(entry) - {"name", "overrides"})
  if unknown or not hasattr(overrides, "items"):
    raise ConfigValueError(f"config.runs[{index}] ({name!r}) holds {unknown or overrides!r}; "
                           "an entry is {'name': ..., 'overrides': {dotted field: value}}")
  return name, dict(overrides.items())

