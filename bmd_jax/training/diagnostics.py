"""Per binary layer diagnostics at each log interval (issue 28 item 5), computed on the
devices in one program and read with the other metrics:

- ``layers/<path>/input_saturation``: the share of the layer's pre-sign activations where its
  input estimator passes under 1% of its peak gradient (core/saturation.py), over the last
  batch of the interval, in training mode (batch statistics, as the step saw them);
- ``layers/<path>/weight_saturation``: the same for the latent weights, as the kernel
  estimator sees them (per output channel standardized under IR-Net scaling). For EDE both
  move with t: the estimator narrows as training goes on;
- ``layers/<path>/flip_ratio``: the share of the layer's latent weights whose sign flipped
  since the last log line (the sign of the latent weight itself, as ``binary/flip_ratio``
  counts it; under IR-Net scaling sign() sees the weight less its channel's mean, so a flip
  there can differ from a flip of the binary weight).

``<path>`` is the layer's parameter path (e.g. ``layer1_0/conv1``). The whole network's
``binary/flip_ratio`` and ``binary/beyond_clip`` stay as they were. The saturations cost one
forward pass of one batch per log line; ``config.log_layer_diagnostics = False`` turns them off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bmd_jax.core import losses
from bmd_jax.training import estimator_schedule


def _layer_name(kernel_path: str) -> str:
  """'layer1_0/conv1/latent_kernel' -> 'layer1_0/conv1'."""
  return kernel_path.rsplit("/", 1)[0]


def layer_diagnostics(state, batch: dict, previous_signs: dict, progress, *, config) -> dict:
  """{'layers/<path>/<measure>': scalar} for every binary layer (module docstring).
  `previous_signs`: the latent kernels' signs at the last log line, by kernel path (as
  train.binary_weight_stats keeps them); `progress`: where the estimators' schedule stands."""
  est_args = estimator_schedule.estimator_args(config, progress)
  _, found = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"], train=True, estimator_args=est_args,
                            mutable=["batch_stats", "intermediates"])
  metrics = {}
  for keys, values in jax.tree_util.tree_flatten_with_path(
      found.get("intermediates", {}), is_leaf=lambda v: isinstance(v, tuple))[0]:
    names = [str(getattr(k, "key", k)) for k in keys]
    # A layer called more than once in a step sowed once per call: their mean.
    metrics[f"layers/{'/'.join(names)}"] = jnp.mean(jnp.stack(values))
  for path, w in losses.binarized_kernels(state.params).items():
    flipped = (w >= 0) != previous_signs[path]
    metrics[f"layers/{_layer_name(path)}/flip_ratio"] = jnp.mean(flipped.astype(jnp.float32))
  return metrics


def create(config, mesh_replicated):
  """The jitted `layer_diagnostics` for this config (its results replicated), or None when
  config.log_layer_diagnostics is off."""
  if not config.get("log_layer_diagnostics", True):
    return None
  return jax.jit(functools.partial(layer_diagnostics, config=config),
                 out_shardings=mesh_replicated)
