"""Per-channel sums over activations, and batch norm's training-mode pass written with them.

A sum over every axis but the channel axis (batch norm's statistics; in the backward pass the
gradient of every per-channel parameter: batch-norm scale and bias, RPReLU's slope and shifts,
RSign's thresholds) is what XLA:CPU runs slowest: its reduction loop takes 5-10x the time of
the same sum written as a matrix-vector product with a vector of ones (bench/reduction_vs_dot.py,
docs/BENCHMARKS.md "ResNet-18 on this CPU"). So:

- `channel_sum(x)` sums over the leading axes: a product with ones on CPU, a plain reduction on
  every other platform (chosen when the program is lowered, `jax.lax.platform_dependent`);
- `per_channel(v, shape, dtype)` broadcasts a per-channel vector to an activation's shape;
  its gradient is a `channel_sum`, so a layer that adds or multiplies by a parameter through
  it gets the fast sum in its backward pass (autodiff of a plain broadcast would emit the slow
  reduction);
- `batch_norm_train(x, scale, bias, eps)` is batch norm over the batch with its gradient
  written out (two channel sums instead of the four or more autodiff would emit).

The values are those of the plain formulas up to float rounding in the order of summation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _sum_by_dot(x):
  rows = x.reshape(-1, x.shape[-1])
  return jnp.ones((rows.shape[0],), x.dtype) @ rows


def _sum_by_reduce(x):
  return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


def _platform_sum(x):
  return jax.lax.platform_dependent(x, cpu=_sum_by_dot, default=_sum_by_reduce)


@jax.custom_vjp
def channel_sum(x: jax.Array) -> jax.Array:
  """The sum of x over every axis but the last: shape (C,)."""
  return _platform_sum(x)


# Residuals must be arrays: an empty one carries the shape and dtype the gradient needs.

def _channel_sum_fwd(x):
  return _platform_sum(x), jnp.zeros((*x.shape[:-1], 0), x.dtype)


def _channel_sum_bwd(empty, g):
  return (jnp.broadcast_to(g.astype(empty.dtype), (*empty.shape[:-1], g.shape[-1])),)


channel_sum.defvjp(_channel_sum_fwd, _channel_sum_bwd)


def channel_mean(x: jax.Array) -> jax.Array:
  return channel_sum(x) / (x.size // x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def per_channel(v: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """v (shape (C,)) broadcast to `shape` in `dtype`."""
  return jnp.broadcast_to(v.astype(dtype), shape)


def _per_channel_fwd(v, shape, dtype):
  return per_channel(v, shape, dtype), jnp.zeros((0,), v.dtype)


def _per_channel_bwd(shape, dtype, empty, g):
  return (channel_sum(g.astype(jnp.float32)).astype(empty.dtype),)


per_channel.defvjp(_per_channel_fwd, _per_channel_bwd)


def batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, variance) over the leading axes, in float32; the variance is E[x^2] - E[x]^2
  clipped at 0 (biased, as Flax's BatchNorm computes it)."""
  x = x.astype(jnp.float32)
  mean = channel_mean(x)
  return mean, jnp.maximum(channel_mean(x * x) - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
  """Batch norm with the batch's own statistics: (y, mean, var), all float32."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  mean, var = batch_statistics(x)
  inv = jax.lax.rsqrt(var + epsilon)
  normalized = (x.astype(jnp.float32) - mean) * inv
  y = normalized * scale + bias
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, residual, cotangents):
  x, mean, inv, scale = residual
  g_y, g_mean, g_var = (c.astype(jnp.float32) for c in cotangents)
  count = x.size // x.shape[-1]
  centered = x.astype(jnp.float32) - mean
  normalized = centered * inv
  g_bias = channel_sum(g_y)
  g_scale = channel_sum(g_y * normalized)
  # d/dx of scale * (x - mean) * inv with mean and var the batch's: the textbook formula, plus
  # whatever reached the statistics themselves (nothing in training; kept for correctness).
  g_x = (scale * inv / count) * (count * g_y - g_bias - normalized * g_scale)
  g_x = g_x + g_mean / count + g_var * (2.0 / count) * centered
  return g_x.astype(x.dtype), g_scale, g_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
