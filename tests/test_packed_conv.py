"""bmd_jax.packed_conv: a binary conv whose CPU forward, where nothing differentiates it, runs
on packed bits. Its value equals the float conv of the same +-1 input and +-alpha kernel, and
its gradients are the float conv's, for the paddings, strides and channel counts the models
use; BinaryConv uses it for precision 'binary' only; a differentiated program and other
platforms keep the float conv."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax import layers, packed_conv, quantizers

LAYOUT = ("NHWC", "HWIO", "NHWC")


def binary_operands(rng, shape, kernel_shape, scale_mode="mean_abs"):
  x = quantizers.binarize(jnp.asarray(rng.normal(size=shape), jnp.float32))
  x = x.at[0, 0, 0, 0].set(1.0)
  latent = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
  kernel = quantizers.binarize_kernel(latent, quantizers.ste_sign, scale_mode)
  return x, kernel


def float_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=LAYOUT,
                                      precision="highest")


@pytest.mark.parametrize("cin,k,strides,padding", [
    (16, 3, (1, 1), "SAME"), (32, 3, (2, 2), "SAME"), (40, 3, (1, 1), ((1, 1), (1, 1))),
    (64, 1, (2, 2), "VALID"), (3, 3, (1, 1), "SAME")])
@pytest.mark.parametrize("scale_mode", ["mean_abs", "irnet", "none"])
def test_value_and_gradients_are_the_float_convs(cin, k, strides, padding, scale_mode):
  rng = np.random.default_rng(cin + k)
  x, kernel = binary_operands(rng, (2, 9, 8, cin), (k, k, cin, 24), scale_mode)
  got = packed_conv.binary_conv(x, kernel, strides, padding)
  want = float_conv(x, kernel, strides, padding)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(want))))

  g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  dx, dk = jax.vjp(lambda a, b: packed_conv.binary_conv(a, b, strides, padding), x, kernel)[1](g)
  ex, ek = jax.vjp(lambda a, b: float_conv(a, b, strides, padding), x, kernel)[1](g)
  np.testing.assert_allclose(dx, ex, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, ek, rtol=1e-5, atol=1e-4)


def test_kernel_columns_match_the_export_packing():
  from bmd_jax import packed
  kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 40, 8)), jnp.float32)
  np.testing.assert_array_equal(packed_conv.kernel_columns(kernel),
                                packed.kernel_columns(packed.pack_kernel(kernel < 0)))


def _lowered(platform, precision="binary", differentiated=False):
  conv = layers.BinaryConv(16, (3, 3), precision=precision)
  x = jnp.ones((2, 8, 8, 16), jnp.float32)
  variables = conv.init(jax.random.key(0), x)
  forward = conv.apply
  if differentiated:
    forward = jax.grad(lambda v, x: jnp.sum(conv.apply(v, x) ** 2))
  return jax.jit(forward).trace(variables, x).lower(lowering_platforms=(platform,)).as_text()


def test_the_forward_is_packed_on_cpu_where_not_differentiated():
  assert "stablehlo.popcnt" in _lowered("cpu")
  assert "stablehlo.popcnt" not in _lowered("cpu", differentiated=True)
  assert "stablehlo.popcnt" not in _lowered("cuda")
  assert "stablehlo.popcnt" not in _lowered("cpu", precision="binary_activations")
  with mock.patch.object(packed_conv, "ENABLED", False):
    assert "stablehlo.popcnt" not in _lowered("cpu")


def test_a_differentiated_program_computes_what_the_float_conv_did():
  """The train step's arithmetic is the float conv's, bit for bit: the loss and gradients with
  the packed forward enabled equal those with it switched off."""
  conv = layers.BinaryConv(24, (3, 3), strides=2, input_quantizer="ede", kernel_quantizer="ede")
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(4, 9, 9, 40)), jnp.float32)
  variables = conv.init(jax.random.key(1), x)
  loss = lambda v, x: jnp.sum(jnp.tanh(conv.apply(v, x)))
  value_and_grads = lambda: jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
  on = value_and_grads()
  with mock.patch.object(packed_conv, "ENABLED", False):
    off = value_and_grads()
  for a, b in zip(jax.tree_util.tree_leaves(on), jax.tree_util.tree_leaves(off)):
    np.testing.assert_array_equal(a, b)
