"""channel_sums and layers.BatchNorm against numpy and against Flax's BatchNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.xla_cpu import channel_sums
from bmd_jax.core import layers

SHAPE = (4, 5, 6, 3)


def _normal(seed, shape=SHAPE, loc=0.0, scale=1.0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


@pytest.mark.parametrize("implementation", [channel_sums._sum_by_dot, channel_sums._sum_by_reduce,
                                            channel_sums.channel_sum])
def test_channel_sum_is_the_sum_over_leading_axes(implementation):
  x = _normal(0)
  np.testing.assert_allclose(jax.jit(implementation)(x), x.sum(axis=(0, 1, 2)), rtol=1e-5)


def test_channel_sum_is_a_product_with_ones_on_cpu():
  # The reason the module exists: XLA:CPU's reduction loop is the slow path.
  hlo = jax.jit(channel_sums.channel_sum).lower(_normal(0)).compile().as_text()
  assert " dot(" in hlo and " reduce(" not in hlo


def test_channel_sum_and_per_channel_gradients():
  x, g_sum = _normal(1), _normal(2, (SHAPE[-1],))
  _, pullback = jax.vjp(channel_sums.channel_sum, x)
  np.testing.assert_array_equal(pullback(g_sum)[0], np.broadcast_to(g_sum, SHAPE))

  v, g = _normal(3, (SHAPE[-1],)), _normal(4)
  y, pullback = jax.vjp(lambda v: channel_sums.per_channel(v, SHAPE, jnp.bfloat16), v)
  assert y.dtype == jnp.bfloat16 and y.shape == SHAPE
  np.testing.assert_array_equal(y.astype(np.float32), np.broadcast_to(
      v.astype(jnp.bfloat16).astype(np.float32), SHAPE))
  g_v = jax.jit(pullback)(g.astype(jnp.bfloat16))[0]
  assert g_v.dtype == jnp.float32
  expected = g.astype(jnp.bfloat16).astype(np.float32).sum(axis=(0, 1, 2))
  np.testing.assert_allclose(g_v, expected, rtol=1e-5)


def _plain_batch_norm(x, scale, bias, epsilon):
  """The training-mode formula written plainly; JAX differentiates it on its own."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(x * x, axis=(0, 1, 2)) - mean ** 2
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


def test_batch_norm_train_values_and_gradients_match_the_plain_formula():
  x, scale, bias = _normal(5, loc=0.5, scale=2.0), _normal(6, (3,)), _normal(7, (3,))
  eps = 1e-5
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  y, got_mean, got_var = channel_sums.batch_norm_train(x, scale, bias, eps)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + eps) * scale + bias, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_var, var, rtol=1e-4)

  # Every output's cotangent, the statistics' too, against autodiff of the plain formula.
  cotangents = (_normal(8), _normal(9, (3,)), _normal(10, (3,)))
  _, ours = jax.vjp(lambda *a: channel_sums.batch_norm_train(*a, eps), x, scale, bias)
  _, plain = jax.vjp(lambda *a: _plain_batch_norm(*a, eps), x, scale, bias)
  for got, want in zip(jax.jit(ours)(cotangents), plain(cotangents)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def _flax_and_ours(train, dtype=None):
  kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  return nn.BatchNorm(**kwargs), layers.BatchNorm(**kwargs)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_batch_norm_layer_matches_flax(dtype):
  x = jnp.asarray(_normal(11, loc=1.0, scale=3.0), dtype or jnp.float32)
  flax_train, ours_train = _flax_and_ours(True, dtype)
  variables = flax_train.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours_train.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
      jnp.shape, variables)
  variables = {"params": {"scale": _normal(12, (3,)), "bias": _normal(13, (3,))},
               "batch_stats": {"mean": _normal(14, (3,)), "var": _normal(15, (3,)) ** 2}}
  weights = _normal(16)

  def loss(module, params):
    y, stats = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * weights), (y, stats)

  (l_flax, (y_flax, s_flax)), g_flax = jax.value_and_grad(
      lambda p: loss(flax_train, p), has_aux=True)(variables["params"])
  (l_ours, (y_ours, s_ours)), g_ours = jax.jit(jax.value_and_grad(
      lambda p: loss(ours_train, p), has_aux=True))(variables["params"])
  assert y_ours.dtype == y_flax.dtype
  tol = dict(rtol=2e-2, atol=2e-2) if dtype else dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(y_ours.astype(np.float32), y_flax.astype(np.float32), **tol)
  for got, want in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_flax)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
    np.testing.assert_allclose(got, want, **tol)

  flax_eval, ours_eval = _flax_and_ours(False, dtype)
  np.testing.assert_allclose(ours_eval.apply(variables, x).astype(np.float32),
                             flax_eval.apply(variables, x).astype(np.float32), **tol)


def test_batch_norm_layer_refuses_what_it_does_not_compute():
  with pytest.raises(NotImplementedError, match="flax.linen.BatchNorm"):
    layers.BatchNorm(use_running_average=False, axis=1).init(jax.random.PRNGKey(0), _normal(0))
