"""The estimators' traced arguments at a point of training: where their schedule stands
(schedule_progress) and each registered estimator's arguments there (estimator_args). The
train step and the evaluator both compute them."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from bmd_jax.core import quantizers
from bmd_jax.infra.config_checks import ConfigValueError


def schedule_progress(config: ml_collections.ConfigDict, epoch, total_epochs: float):
  """Where the estimators' schedule stands, in [0, 1]: at the last epoch start (IR-Net's
  epoch-wise update, `estimators.schedule_per='epoch'`) or at this step ('step', for runs of
  a few epochs, where an epoch-wise t would hardly move)."""
  per = config.estimators.get("schedule_per", "epoch")
  if per not in ("epoch", "step"):
    raise ConfigValueError(f"estimators.schedule_per={per!r}; choose 'epoch' or 'step'")
  position = jnp.floor(epoch) if per == "epoch" else epoch
  return jnp.minimum(position / max(total_epochs, 1e-9), 1.0)


def estimator_args(config: ml_collections.ConfigDict, progress) -> dict:
  """Arguments of every registered estimator at a point of training (progress in [0, 1]),
  as each registry entry computes them (quantizers.ESTIMATORS). Traced inside the step, so
  a schedule (EDE's t) advances without recompiling; estimators no layer uses cost nothing."""
  return quantizers.traced_arguments(config.estimators, progress)


def estimators_in_use(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return (config.model.input_quantizer, config.model.kernel_quantizer)
