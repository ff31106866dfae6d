"""conv_grads' backward pass on CPU: the weight and input gradients written as convolutions in
XLA:CPU's canonical layout. They equal jax.grad of lax.conv_general_dilated, and inside a while
loop (the train loop's N steps a dispatch) the compiled program holds only canonical-layout
convolutions: autodiff's layouts there run as naive loop nests, 8-14x slower
(docs/BENCHMARKS.md, "Steps per dispatch")."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.core import layers
from bmd_jax.xla_cpu import conv_grads

LAYOUT = ("NHWC", "HWIO", "NHWC")
CANONICAL = "b01f_01io->b01f"  # XLA:CPU's layout for its convolution library


def _operands(size, kernel, strides, padding, groups=1, batch=4, channels=6, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(keys[0], (batch, size, size + 1, channels))  # odd and even at once
  w = jax.random.normal(keys[1], (kernel, kernel, channels // groups, 4))
  y = jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=LAYOUT, feature_group_count=groups), x, w)
  return x, w, jax.random.normal(keys[2], y.shape)


def _grads(conv, strides, padding, groups=1):
  def loss(x, w, g):
    return jnp.sum(conv(x, w, strides, padding, dimension_numbers=LAYOUT,
                        feature_group_count=groups) * g)
  return jax.jit(jax.grad(loss, (0, 1)))


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (1, 1)), ((2, 0), (0, 1))])
def test_gradients_equal_autodiff_of_lax_conv(kernel, strides, padding):
  _check_gradients(7, kernel, strides, padding)


@pytest.mark.parametrize("size, kernel, strides, padding", [
    (8, 3, (2, 2), "VALID"),  # the stride skips the last row and column
    (9, 3, (1, 2), "SAME"),
    (8, 7, (2, 2), ((3, 3), (3, 3))),  # ResNet-18's stem
])
def test_gradients_equal_autodiff_of_lax_conv_more_shapes(size, kernel, strides, padding):
  _check_gradients(size, kernel, strides, padding)


def _check_gradients(size, kernel, strides, padding):
  operands = _operands(size, kernel, strides, padding)
  ours = _grads(conv_grads.conv_general_dilated, strides, padding)(*operands)
  xla = _grads(jax.lax.conv_general_dilated, strides, padding)(*operands)
  for a, b in zip(ours, xla):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_feature_groups_keep_xla_gradient():
  # No layer groups its features; such a conv is left to XLA, gradient included.
  operands = _operands(8, 3, (1, 1), "SAME", groups=2)
  ours = _grads(conv_grads.conv_general_dilated, (1, 1), "SAME", 2)(*operands)
  xla = _grads(jax.lax.conv_general_dilated, (1, 1), "SAME", 2)(*operands)
  for a, b in zip(ours, xla):
    np.testing.assert_array_equal(a, b)


def _looped_conv_layouts(conv, strides, padding, platform="cpu", batch=4):
  """dim_labels of every convolution in the program that takes 2 descent steps on x and w in a
  while loop: compiled for the CPU, or (another platform) as exported."""
  x, w, g = _operands(8, 3, strides, padding, batch=batch)
  grads = jax.grad(lambda x, w, g: jnp.sum(  # squared: the forward conv stays in the program
      conv(x, w, strides, padding, dimension_numbers=LAYOUT) ** 2 * g), (0, 1))

  def descend(x, w, g):
    def body(_, xw):
      dx, dw = grads(*xw, g)
      return xw[0] - 0.1 * dx, xw[1] - 0.1 * dw
    return jax.lax.fori_loop(0, 2, body, (x, w))

  if platform == "cpu":
    text = jax.jit(descend).lower(x, w, g).compile().as_text()
    return re.findall(r" convolution\(.*dim_labels=([^,\s]+)", text)
  text = jax.export.export(jax.jit(descend), platforms=[platform])(x, w, g).mlir_module()
  return re.findall(r"stablehlo.convolution.*dim_numbers = (.*?), window", text)


@pytest.mark.parametrize("strides, padding", [((1, 1), "SAME"), ((2, 2), ((1, 1), (1, 1)))])
def test_inside_a_loop_the_cpu_backward_has_only_canonical_convolutions(strides, padding):
  ours = _looped_conv_layouts(conv_grads.conv_general_dilated, strides, padding)
  assert len(ours) == 3 and set(ours) == {CANONICAL}  # forward, input and weight gradient
  # What it guards against: autodiff's own gradients, left in their layouts in the loop body.
  xla = _looped_conv_layouts(jax.lax.conv_general_dilated, strides, padding)
  assert len(xla) == 3 and sorted(set(xla)) == [CANONICAL, "b01f_01oi->b01f", "f01b_i01o->01bf"]


def test_inside_a_loop_the_chunked_weight_gradient_is_canonical(monkeypatch):
  monkeypatch.setattr(conv_grads, "MIN_POSITIONS", 1)  # chunks at these tests' small shapes
  ours = _looped_conv_layouts(conv_grads.conv_general_dilated, (1, 1), "SAME",
                              batch=conv_grads.CHUNKS)
  assert len(ours) == 2 + conv_grads.CHUNKS and set(ours) == {CANONICAL}


def test_gpu_and_tpu_keep_autodiff_gradient():
  for platform in ("cuda", "tpu"):
    ours = _looped_conv_layouts(conv_grads.conv_general_dilated, (1, 1), "SAME", platform)
    xla = _looped_conv_layouts(jax.lax.conv_general_dilated, (1, 1), "SAME", platform)
    assert ours == xla and len(set(ours)) == 3, platform


def test_binary_conv_layer_backward_in_a_loop_is_canonical():
  conv = layers.BinaryConv(8, (3, 3), strides=2, padding=((1, 1), (1, 1)))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 9, 3))
  variables = conv.init(jax.random.PRNGKey(1), x)

  def descend(variables):
    step = jax.grad(lambda v: jnp.sum(conv.apply(v, x) ** 2))
    return jax.lax.fori_loop(0, 2, lambda _, v: jax.tree_util.tree_map(
        lambda a, b: a - 0.1 * b, v, step(v)), variables)

  text = jax.jit(descend).lower(variables).compile().as_text()
  labels = re.findall(r" convolution\(.*dim_labels=([^,\s]+)", text)
  assert labels and set(labels) == {CANONICAL}
