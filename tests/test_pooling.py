"""pooling.max_pool against Flax's nn.max_pool: values and gradients, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.xla_cpu import pooling

CASES = [(3, 2, 1, (2, 9, 8, 3)), (3, 2, 1, (1, 7, 7, 2)), (2, 2, 0, (2, 6, 6, 3))]


def _value_and_grad(pool, x, weights):
  return jax.jit(jax.value_and_grad(lambda x: jnp.sum(pool(x) * weights)))(x)


@pytest.mark.parametrize("window,stride,padding,shape", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_flax(window, stride, padding, shape, ties):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  if ties:  # binary nets' integer activations: many equal values in a window
    x = np.round(x).astype(np.float32)
  ours = lambda x: pooling.max_pool(x, window, stride, padding)
  flax = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride),
                               padding=((padding, padding), (padding, padding)))
  out_shape = jax.eval_shape(flax, x).shape
  weights = rng.normal(size=out_shape).astype(np.float32)
  (value, grad), (want_value, want_grad) = (_value_and_grad(ours, x, weights),
                                            _value_and_grad(flax, x, weights))
  np.testing.assert_array_equal(ours(x), flax(x))
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  # Overlapping windows add their gradients in another order: rounding only.
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


def test_max_pool_on_cpu_has_no_windowed_loops():
  # The reason the module exists: XLA:CPU's reduce-window / select-and-scatter are the slow path.
  x = jnp.ones((1, 8, 8, 2))
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(pooling.max_pool(x, 3, 2, 1)))).lower(
      x).compile().as_text()
  assert "reduce-window" not in hlo and "select-and-scatter" not in hlo
