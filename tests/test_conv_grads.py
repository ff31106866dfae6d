"""conv_grads.conv_general_dilated: XLA's convolution with, on CPU, the weight gradient summed
over batch chunks where that pays; values and both gradients equal XLA's, and the programs
lowered for CPU, GPU and TPU hold the convolutions the rule says. (The canonical layout of the
CPU gradients: tests/test_conv_backward.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.xla_cpu import conv_grads
from bmd_jax.core import layers

LAYOUT = ("NHWC", "HWIO", "NHWC")


@pytest.fixture
def small_shapes_chunked(monkeypatch):
  """The chunked gradient at the small shapes of these tests (the rule leaves them XLA's)."""
  monkeypatch.setattr(conv_grads, "MIN_POSITIONS", 1)


def _loss(conv, strides, padding):
  def loss(x, w, g):
    y = conv(x, w, strides, padding, dimension_numbers=LAYOUT)
    return jnp.sum(y.astype(jnp.float32) * g)
  return loss


def _operands(x_shape, w_shape, strides, padding, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(keys[0], x_shape).astype(dtype)
  w = jax.random.normal(keys[1], w_shape).astype(dtype)
  y = jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=LAYOUT), x, w)
  return x, w, jax.random.normal(keys[2], y.shape)


@pytest.mark.parametrize("x_shape, w_shape, strides, padding", [
    ((16, 8, 8, 4), (3, 3, 4, 8), (1, 1), "SAME"),  # chunked
    ((16, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (0, 2))),  # chunked, explicit padding
    ((16, 8, 8, 4), (3, 3, 4, 8), (2, 2), "SAME"),  # strided: XLA's
    ((12, 8, 8, 4), (1, 1, 4, 8), (1, 1), "VALID"),  # batch not divisible: XLA's
])
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_value_and_gradients_equal_xla(x_shape, w_shape, strides, padding, dtype, rtol,
                                       small_shapes_chunked):
  operands = _operands(x_shape, w_shape, strides, padding, dtype)
  ours = jax.jit(jax.value_and_grad(_loss(conv_grads.conv_general_dilated, strides, padding),
                                    (0, 1)))(*operands)
  xla = jax.jit(jax.value_and_grad(_loss(jax.lax.conv_general_dilated, strides, padding),
                                   (0, 1)))(*operands)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(xla)):
    assert a.dtype == b.dtype
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


def _weight_grad_convolutions(x_shape, w_shape, strides, platform):
  """Convolutions in the weight-gradient program exported for `platform` (shapes only)."""
  x, w = (jax.ShapeDtypeStruct(shape, jnp.float32) for shape in (x_shape, w_shape))
  y = jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, "SAME", dimension_numbers=LAYOUT), x, w)
  grad = jax.jit(jax.grad(_loss(conv_grads.conv_general_dilated, strides, "SAME"), 1))
  return jax.export.export(grad, platforms=[platform])(x, w, y).mlir_module().count(
      "stablehlo.convolution")


def test_the_cpu_program_sums_chunks_only_where_it_pays():
  positions = conv_grads.MIN_POSITIONS
  chunkable = ((16, positions // 16, 1, 4), (3, 3, 4, 8), (1, 1))
  assert _weight_grad_convolutions(*chunkable, "cpu") == conv_grads.CHUNKS
  assert _weight_grad_convolutions(*chunkable, "cuda") == 1
  assert _weight_grad_convolutions(*chunkable, "tpu") == 1
  too_few = ((16, positions // 16 - 1, 1, 4), (3, 3, 4, 8), (1, 1))
  assert _weight_grad_convolutions(*too_few, "cpu") == 1
  big = conv_grads.MAX_KERNEL_SIZE // 9 + 1  # a 3x3xCx1 kernel over the limit
  assert _weight_grad_convolutions((16, positions // 16, 1, big), (3, 3, big, 1), (1, 1),
                                   "cpu") == 1
  assert _weight_grad_convolutions((16, positions // 8, 2, 4), (3, 3, 4, 8), (2, 2), "cpu") == 1


def test_the_full_precision_conv_layer_uses_it(small_shapes_chunked):
  x = jnp.ones((8, 6, 6, 3))
  conv = layers.Conv(4, (3, 3), use_bias=False)
  variables = conv.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, variables) == {"params": {"kernel": (3, 3, 3, 4)}}
  grad = jax.jit(jax.grad(lambda v: jnp.sum(conv.apply(v, x) ** 2)))
  assert jax.export.export(grad, platforms=["cpu"])(variables).mlir_module().count(
      "stablehlo.convolution") == 1 + conv_grads.CHUNKS  # the forward, the weight gradient
