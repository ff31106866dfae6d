"""A 2-D convolution whose weight gradient, on CPU, is summed over chunks of the batch.

XLA:CPU computes a convolution's weight gradient as one contraction over the batch and the
pixels into the few elements of the kernel, and for a small kernel it runs on one thread; the
same sum taken over 8 slices of the batch runs as 8 independent convolutions that both cores
share. On ResNet-20's shapes at batch 128 (`python bench/conv_weight_grad.py`): 3x3x16x16
kernels 1.6x faster, 3x3x32x32 1.4x, 3x3x64x64 no faster; strided convolutions (ResNet-20's
downsampling 3x3 convs, ResNet-18's 7x7 stem) no faster or slower, and ResNet-18's 3x3x64x64
at 56 pixels slower (one-off timings, docs/BENCHMARKS.md). The forward pass and the input
gradient are XLA's own, unchanged.

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature, so it serves as Flax's
`nn.Conv(conv_general_dilated=...)` too. The chunked form is used where it was measured to pay
(plain 2-D convolutions, NHWC/HWIO, stride 1, batch divisible by `CHUNKS`, kernel of at
most `MAX_KERNEL_SIZE` elements, at least `MIN_POSITIONS` input positions); anything else,
and every platform but the CPU, gets XLA's gradient. Small convolutions (the digits model,
tests) keep XLA's: there the chunks only add compile time. Values differ from XLA's only by
float rounding in the order of summation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CHUNKS = 8  # 16 examples a chunk at batch 128: 8 and 16 chunks measured alike, 32 slower
MAX_KERNEL_SIZE = 16384  # elements: 3x3x32x32 gains, 3x3x64x64 does not
MIN_POSITIONS = 32768  # batch x height x width: the smallest measured to gain (128 x 16 x 16)
_LAYOUT = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`jax.lax.conv_general_dilated`, with the chunked weight gradient where it pays."""
  # Flax's nn.Conv passes dilations of 1 and its layout as ConvDimensionNumbers.
  plain = (lhs.ndim == 4 and set(lhs_dilation or (1,)) == {1}
           and set(rhs_dilation or (1,)) == {1} and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)))
  pays = (tuple(window_strides) == (1, 1) and lhs.shape[0] % CHUNKS == 0
          and rhs.size <= MAX_KERNEL_SIZE and lhs.size // lhs.shape[-1] >= MIN_POSITIONS)
  if not (plain and pays):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)  # hashable: a static argument
  return _conv(lhs, rhs, tuple(window_strides), padding, precision)


def _plain_conv(x, w, strides, padding, precision):
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_LAYOUT,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
  return _plain_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
  return _plain_conv(x, w, strides, padding, precision), (x, w)


def _weight_grad(x, w, g, strides, padding, precision):
  _, vjp = jax.vjp(lambda w: _plain_conv(x, w, strides, padding, precision), w)
  return vjp(g)[0]


def _chunked_weight_grad(x, w, g, strides, padding, precision):
  # In float32 (XLA:CPU computes bfloat16 convolutions in float32 anyway), rounded once.
  parts = [_weight_grad(xs.astype(jnp.float32), w.astype(jnp.float32), gs.astype(jnp.float32),
                        strides, padding, precision)
           for xs, gs in zip(jnp.split(x, CHUNKS), jnp.split(g, CHUNKS))]
  return functools.reduce(jnp.add, parts).astype(w.dtype)


def _conv_bwd(strides, padding, precision, residuals, g):
  x, w = residuals
  _, vjp_x = jax.vjp(lambda x: _plain_conv(x, w, strides, padding, precision), x)
  dw = jax.lax.platform_dependent(
      x, w, g, cpu=functools.partial(_chunked_weight_grad, strides=strides, padding=padding,
                                     precision=precision),
      default=functools.partial(_weight_grad, strides=strides, padding=padding,
                                precision=precision))
  return vjp_x(g)[0], dw


_conv.defvjp(_conv_fwd, _conv_bwd)
