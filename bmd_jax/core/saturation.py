"""Where a sign estimator passes (almost) no gradient: its saturation (issue 28 item 5).

A sign function's forward pass is +-1 everywhere; what an estimator changes is the slope its
backward pass gives each input, ``d sign(x) / dx`` as its custom_vjp computes it (STE:
``1{|x| <= clip}``; ApproxSign: ``max(2 - 2|x|, 0)``; EDE: ``k t (1 - tanh^2(t x))``, which
narrows as t grows). An input is *saturated* where that slope is below ``SATURATED`` (1%) of
the estimator's peak, its slope at 0 (where every bundled estimator peaks): its latent weight
or activation then learns (almost) nothing through sign().

Pure functions; the binary layers call them only when a diagnostics pass asks for their
``intermediates`` (core/layers.py), so a train step never computes them.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

SATURATED = 0.01  # a slope below 1% of the peak counts as no gradient


def slope(sign: Callable[..., jax.Array], x: jax.Array, **kwargs) -> jax.Array:
  """The elementwise slope of ``sign(x, **kwargs)`` as its backward pass gives it: the
  vector-Jacobian product with ones, which for an elementwise function is its derivative."""
  _, backward = jax.vjp(lambda v: sign(v, **kwargs), x)
  return backward(jnp.ones_like(x))[0]


def saturated_share(sign: Callable[..., jax.Array], x: jax.Array, **kwargs) -> jax.Array:
  """The share of entries of ``x`` whose slope is below ``SATURATED`` times the slope at 0."""
  x = jnp.asarray(x, jnp.float32)
  peak = slope(sign, jnp.zeros((), x.dtype), **kwargs)
  return jnp.mean((slope(sign, x, **kwargs) < SATURATED * peak).astype(jnp.float32))
