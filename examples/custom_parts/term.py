"""A loss term of one's own: how far the latent weights of the binary layers stray outside the
straight-through window [-margin, margin], where they get no gradient from the sign.

    term = mean over the kernels' elements of relu(|w| - margin)^2, averaged over layers

The config names it in its block, ``loss.outside_clip.term = "custom_parts.term:outside_clip"``,
beside its weight and its own option ``margin``; the train step logs it as
``train/outside_clip`` (and ``grads/outside_clip``).
"""

import jax.numpy as jnp

from bmd_jax.core import losses


def outside_clip(cfg, inputs):
  """(value, extra metrics) from the term's own block `cfg` and the step's `inputs`
  (objective.Inputs: params, logits, labels, epoch, ...). Returning None leaves it out."""
  margin = cfg.get("margin", 1.0)
  kernels = losses.binarized_kernels(inputs.params).values()
  per_layer = [jnp.mean(jnp.maximum(jnp.abs(w) - margin, 0.0) ** 2) for w in kernels]
  return jnp.mean(jnp.stack(per_layer)), {}
