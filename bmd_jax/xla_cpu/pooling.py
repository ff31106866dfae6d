"""Max pooling whose gradient is fast on XLA:CPU.

Flax's `nn.max_pool` is a `reduce_window`; its gradient is a select-and-scatter that XLA:CPU
runs as windowed loops over the padded input: ReActNet/Bi-Real ResNet-18's stem pool
(3x3, stride 2, on 32x112x112x64) takes 3.8x the time, forward and backward, of the same
pool written as the maximum of its nine strided slices with the gradient below
(bench/max_pool_grad.py, docs/BENCHMARKS.md). Each window's gradient goes to its first
largest element in row-major window order, the element XLA's select-and-scatter picks, so the
gradient equals Flax's, ties included (tests/test_pooling.py: hardtanh and ReLU stems tie
often). Other platforms keep Flax's pool (`jax.lax.platform_dependent`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _window_slice(padded, i, j, out_hw, stride):
  """The (ho, wo) grid of window position (i, j) in the padded input."""
  (ho, wo), n, c = out_hw, padded.shape[0], padded.shape[3]
  return jax.lax.slice(padded, (0, i, j, 0),
                       (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                       (1, stride, stride, 1))


def _pad(x, padding):
  return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=-jnp.inf)


def _out_hw(padded, window, stride):
  return tuple((padded.shape[k] - window) // stride + 1 for k in (1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_by_slices(x, window: int, stride: int, padding: int):
  return _max_pool_fwd(x, window, stride, padding)[0]


def _max_pool_fwd(x, window, stride, padding):
  padded = _pad(x, padding)
  out_hw = _out_hw(padded, window, stride)
  slices = [_window_slice(padded, i, j, out_hw, stride)
            for i in range(window) for j in range(window)]
  out = functools.reduce(jnp.maximum, slices)
  return out, (padded, out)


def _max_pool_bwd(window, stride, padding, residual, g):
  padded, out = residual
  out_hw = out.shape[1:3]
  taken = jnp.zeros(out.shape, bool)
  grad = jnp.zeros(padded.shape, g.dtype)
  for i in range(window):
    for j in range(window):
      hit = (_window_slice(padded, i, j, out_hw, stride) == out) & ~taken
      taken = taken | hit
      # The transpose of a strided slice: the slice's values spread back with zeros between.
      spread = ((0, 0, 0),
                (i, padded.shape[1] - i - stride * (out_hw[0] - 1) - 1, stride - 1),
                (j, padded.shape[2] - j - stride * (out_hw[1] - 1) - 1, stride - 1),
                (0, 0, 0))
      grad = grad + jax.lax.pad(jnp.where(hit, g, 0).astype(g.dtype),
                                jnp.zeros((), g.dtype), spread)
  return (grad[:, padding:padded.shape[1] - padding, padding:padded.shape[2] - padding, :],)


_max_pool_by_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  """Max pool of NHWC x over square windows with `padding` pixels of -inf on every side: the
  values and gradient of `nn.max_pool(x, (window,) * 2, (stride,) * 2, ((padding,) * 2,) * 2)`."""
  def flax_pool(x):
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((padding, padding), (padding, padding)))
  return jax.lax.platform_dependent(
      x, cpu=lambda x: _max_pool_by_slices(x, window, stride, padding), default=flax_pool)
