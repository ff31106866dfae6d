"""Checks of a config's values before anything runs: a bad value is named with its fix instead
of surfacing as a ZeroDivisionError or a grain traceback deep in the loop."""

from __future__ import annotations

import ml_collections

# Fields that must be positive integers, and what each counts.
_POSITIVE = {
    "batch_size": "examples per training step (the global batch)",
    "eval_batch_size": "examples per evaluation step",
    "log_every_steps": "steps between metric lines",
    "checkpoint_keep": "checkpoints kept per stage",
}
# Fields that may also be 0, which turns them off (or, for steps_per_dispatch, means "up to
# the next event"), and what each counts.
_NON_NEGATIVE = {
    "checkpoint_every_steps": ("steps between checkpoints", int),
    "checkpoint_every_epochs": ("epochs between checkpoints", (int, float)),
    "checkpoint_every_minutes": ("minutes between checkpoints", (int, float)),
    "steps_per_dispatch": ("train steps per dispatch", int),
}
_EVAL_PRECISIONS = ("default", "high", "highest", "float32", "tensorfloat32", "bfloat16")


class ConfigValueError(ValueError):
  """A config field holds a value nothing can run with; the message names it and the fix."""


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigValueError naming the first field with an impossible value and the fix."""
  for field, meaning in _POSITIVE.items():
    value = config.get(field)
    if value is not None and (not isinstance(value, int) or value <= 0):
      raise ConfigValueError(f"config.{field}={value!r}: it counts {meaning} and must be a "
                             f"positive integer; e.g. --config.{field}=64")
  for field, (meaning, kind) in _NON_NEGATIVE.items():
    value = config.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                              or value < 0):
      raise ConfigValueError(f"config.{field}={value!r}: it counts {meaning} and must be 0 "
                             f"(off) or more; e.g. --config.{field}=0")
  precision = config.get("eval_precision", "highest")
  if precision not in _EVAL_PRECISIONS:
    raise ConfigValueError(f"config.eval_precision={precision!r}: choose one of "
                           f"{', '.join(_EVAL_PRECISIONS)} ('highest': float32 matmuls)")
  if config.get("num_train_steps", -1) <= 0 and config.get("num_epochs", 1) <= 0:
    raise ConfigValueError(f"config.num_epochs={config.num_epochs} with num_train_steps="
                           f"{config.num_train_steps}: nothing to train; give a positive "
                           "num_epochs or num_train_steps")
