"""A sign estimator of one's own: a clipped straight-through gradient whose window narrows.

Its gradient is 1 where |x| <= width and 0 elsewhere, as bmd_jax's ``ste`` with clip value
``width``; the width moves geometrically from ``estimators.narrowing_width_start`` at the start
of training to ``estimators.narrowing_width_end`` at its end, so early steps pass gradient to
more of the pre-sign values and late ones only to those near the sign's step.

The config names it ``custom_parts.estimator:NARROWING_STE``: an import path, which every
process that reads the run (training, export, analyze) imports.
"""

import jax
import jax.numpy as jnp

from bmd_jax.core import quantizers


@jax.custom_vjp
def _narrowing_ste(x, width):
  return quantizers.binarize(x)  # exactly +-1, sign(0) = +1, as every bmd_jax estimator


def _forward(x, width):
  return quantizers.binarize(x), (x, width)


def _backward(saved, g):
  x, width = saved
  passes = jnp.abs(x) <= width
  # The width is a traced argument (it changes every step without recompiling): its gradient
  # is zero, as for bmd_jax's own hyper-parameters.
  return jnp.where(passes, g, 0).astype(g.dtype), jnp.zeros_like(width)


_narrowing_ste.defvjp(_forward, _backward)


def narrowing_ste(x, width=1.0):
  """Sign of x with the clipped straight-through gradient of window `width`. The default is
  what init and a layer without arguments use."""
  return _narrowing_ste(x, jnp.asarray(width, jnp.float32))


def width_at(settings, progress):
  """{'width': ...} at `progress` in [0, 1] (traced). The options are this estimator's own
  fields of the config's ``estimators`` block, read with a default: bmd_jax computes the
  arguments of every estimator it has met under each config it runs."""
  start = settings.get("narrowing_width_start", 2.0)
  end = settings.get("narrowing_width_end", 1.0)
  return {"width": start * (end / start) ** jnp.asarray(progress, jnp.float32)}


# The registry entry: the function, how its arguments follow from the config and progress, and
# which of them are scheduled (logged as estimators/<name>/width).
NARROWING_STE = quantizers.Estimator(narrowing_ste, width_at, scheduled=("width",))
