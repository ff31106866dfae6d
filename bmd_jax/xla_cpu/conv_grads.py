"""2-D convolutions whose gradients, on CPU, are convolutions in XLA:CPU's canonical layout, the
weight gradient summed over chunks of the batch where that pays.

Canonical layout. XLA:CPU hands a convolution to its fast library only in one layout
(`dim_labels=b01f_01io->b01f`: NHWC input, HWIO kernel, NHWC output). Autodiff gives a conv's
gradients in others (the weight gradient `f01b_i01o->01bf`, the input gradient
`b01f_01oi->b01f`). At a program's top level XLA:CPU transposes them into the canonical layout,
but inside a while loop's body (the train loop's N steps a dispatch) it leaves them as they are
and runs them as naive loop nests: ResNet-8's step 8-14x slower (docs/BENCHMARKS.md, "Steps per
dispatch"). So on CPU both gradients are written here as canonical convolutions, the transposes
explicit, for `y = conv(x, w)` with strides s and (low, high) paddings:

    weight gradient  x as (C_in, H, W, N) convolved with the output gradient as a kernel
                     (H_out, W_out, N, C_out), dilated by s; transposed back to HWIO
    input gradient   the output gradient dilated by s (lhs_dilation), convolved with w flipped
                     in space, its in and out channels swapped

Chunks. XLA:CPU computes a weight gradient as one contraction over the batch and the pixels
into the few elements of the kernel, on one thread for a small kernel; the same sum over 8
slices of the batch runs as 8 convolutions that both cores share. In the canonical form, at
batch 128 (`python bench/conv_weight_grad.py`, 3 rounds, 2026-12-06, load 2.8): 3x3x16x16 on
32x32 pixels 1.3-1.4x faster than XLA's gradient, 3x3x32x32 on 16x16 1.1-1.2x; wider kernels,
fewer pixels and strides gained nothing when measured against XLA's own form
(docs/BENCHMARKS.md), so the rule below leaves them one convolution.

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature, so it serves as Flax's
`nn.Conv(conv_general_dilated=...)` too. The canonical gradients cover every plain 2-D
convolution (NHWC/HWIO, no dilation, no feature groups: every conv of bmd_jax's models); chunks
where they were measured to pay (stride 1, batch divisible by `CHUNKS`, kernel of at most
`MAX_KERNEL_SIZE` elements, at least `MIN_POSITIONS` input positions). Anything else, and every
platform but the CPU, gets autodiff's gradient of `jax.lax.conv_general_dilated`. Values differ
from it only by float rounding in the order of summation.
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
  """`jax.lax.conv_general_dilated`, with canonical-layout gradients on CPU."""
  # Flax's nn.Conv passes dilations of 1 and its layout as ConvDimensionNumbers.
  plain = (lhs.ndim == 4 and set(lhs_dilation or (1,)) == {1}
           and set(rhs_dilation or (1,)) == {1} and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)))
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  strides = tuple(window_strides)
  if isinstance(padding, str):  # the gradients' paddings are worked out from explicit ones
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(low), int(high)) for low, high in padding)  # hashable: a static argument
  return _conv(lhs, rhs, strides, pads, precision)


def _plain_conv(x, w, strides, pads, precision):
  return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_LAYOUT,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return _plain_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _plain_conv(x, w, strides, pads, precision), (x, w)


def _autodiff_grads(x, w, g, strides, pads, precision):
  _, vjp = jax.vjp(lambda x, w: _plain_conv(x, w, strides, pads, precision), x, w)
  return vjp(g)


def _weight_grad(x, w_shape, g, strides, pads, precision):
  """dw[i, j, c, o] = sum over n, p, q of x_padded[n, s*p + i, s*q + j, c] * g[n, p, q, o]."""
  # The high padding that makes the output exactly the kernel's size (negative where the
  # forward conv never reached the last rows).
  w_pads = [(low, w_shape[d] - x.shape[1 + d] - low + (g.shape[1 + d] - 1) * strides[d])
            for d, (low, _) in enumerate(pads)]
  dw = jax.lax.conv_general_dilated(
      jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1), w_pads,
      rhs_dilation=strides, dimension_numbers=_LAYOUT, precision=precision)
  return jnp.transpose(dw, (1, 2, 0, 3))


def _input_grad(x_shape, w, g, strides, pads, precision):
  """The transposed convolution: g dilated by the strides, through w flipped and transposed."""
  k = w.shape[:2]
  # Full padding less the forward's, plus the rows a stride skipped at the high end.
  x_pads = [(k[d] - 1 - low, k[d] - 1 - high + (x_shape[1 + d] + low + high - k[d]) % strides[d])
            for d, (low, high) in enumerate(pads)]
  w_t = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
  return jax.lax.conv_general_dilated(g, w_t, (1, 1), x_pads, lhs_dilation=strides,
                                      dimension_numbers=_LAYOUT, precision=precision)


def _chunks_pay(x, w, strides) -> bool:
  return (strides == (1, 1) and x.shape[0] % CHUNKS == 0 and w.size <= MAX_KERNEL_SIZE
          and x.size // x.shape[-1] >= MIN_POSITIONS)


def _cpu_grads(x, w, g, strides, pads, precision):
  g = g.astype(x.dtype)
  dx = _input_grad(x.shape, w, g, strides, pads, precision)
  if _chunks_pay(x, w, strides):
    # In float32 (XLA:CPU computes bfloat16 convolutions in float32 anyway), rounded once.
    parts = [_weight_grad(xs.astype(jnp.float32), w.shape, gs.astype(jnp.float32), strides,
                          pads, precision)
             for xs, gs in zip(jnp.split(x, CHUNKS), jnp.split(g, CHUNKS))]
    dw = functools.reduce(jnp.add, parts)
  else:
    dw = _weight_grad(x, w.shape, g, strides, pads, precision)
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _conv_bwd(strides, pads, precision, residuals, g):
  x, w = residuals
  static = dict(strides=strides, pads=pads, precision=precision)
  return jax.lax.platform_dependent(x, w, g, cpu=functools.partial(_cpu_grads, **static),
                                    default=functools.partial(_autodiff_grads, **static))


_conv.defvjp(_conv_fwd, _conv_bwd)
