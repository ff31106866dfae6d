"""A binary conv whose forward pass, on CPU and where it is not differentiated, runs on packed
bits: evaluation inside training, and any inference through the model's own `apply`.

A binary layer's conv takes a +-1 input and a kernel of +-alpha per output channel
(quantizers.binarize_kernel). Its value is therefore alpha * count, with count the integer conv
of the signs, which packed.binary_conv_counts computes by XOR-popcount 2.3-5x faster than
XLA:CPU's float conv at batch 128 (docs/BENCHMARKS.md, "Packed inference"). The value differs
from the float conv's only by float rounding (alpha * count is the exact product, the float
conv a rounded sum of +-alpha terms).

Under differentiation (the train step) the forward is the float conv and the gradients its own
(conv_grads: XLA's input gradient, the chunked weight gradient): a packed forward measured no
faster there (docs/BENCHMARKS.md), and this keeps training's arithmetic as it was. A custom
VJP gives exactly that split: its primal function runs when nothing differentiates it.

`binary_conv` must only get operands that are binary in that sense: BinaryConv calls it for
precision 'binary' alone (every registered input quantizer gives +-1, with sign(0) = +1, and
every kernel quantizer +-1 times a per-channel scale). Every platform but the CPU, and
`ENABLED = False` (the benchmarks' switch), get the float conv.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bmd_jax import conv_grads, packed

ENABLED = True  # read when a program is traced: bench/ switches it off for the float forward
_LAYOUT = ("NHWC", "HWIO", "NHWC")


def binary_conv(x, kernel, strides, padding):
  """conv(x, kernel) (NHWC, HWIO) for x in {-1, +1} and kernel = +-alpha[cout]."""
  strides = tuple(strides)
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)  # hashable: a static argument
  if not ENABLED:
    return _float_conv(x, kernel, strides, padding)
  return _conv(x, kernel, strides, padding)


def _float_conv(x, kernel, strides, padding):
  return conv_grads.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_LAYOUT)


def kernel_columns(kernel):
  """The kernel's sign bits (True = -1) packed along its input channels into (kh*kw*words(cin),
  cout) columns, packed.kernel_columns' layout, built in the program: the words are summed
  over a non-minor axis, so no transpose reaches the XOR-popcount loop."""
  kh, kw, cin, cout = kernel.shape
  words = packed.num_words(cin)
  negative = jnp.pad(kernel < 0, ((0, 0), (0, 0), (0, words * packed.WORD_BITS - cin), (0, 0)))
  bits = negative.reshape(kh, kw, words, packed.WORD_BITS, cout).astype(jnp.uint32)
  shifts = jnp.arange(packed.WORD_BITS, dtype=jnp.uint32)[:, None]
  return jnp.sum(bits << shifts, axis=3, dtype=jnp.uint32).reshape(kh * kw * words, cout)


def _packed_forward(x, kernel, strides, padding):
  counts = packed.binary_conv_counts(x, kernel_columns(kernel), kernel.shape[:2], strides,
                                     padding)
  alpha = jnp.abs(kernel[0, 0, 0]).astype(jnp.float32)  # every weight of a channel is +-alpha
  return (counts.astype(jnp.float32) * alpha).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
  return jax.lax.platform_dependent(
      x, kernel, cpu=functools.partial(_packed_forward, strides=strides, padding=padding),
      default=functools.partial(_float_conv, strides=strides, padding=padding))


def _conv_fwd(x, kernel, strides, padding):
  return _float_conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  _, pullback = jax.vjp(functools.partial(_float_conv, strides=strides, padding=padding),
                        x, kernel)
  return pullback(g)


_conv.defvjp(_conv_fwd, _conv_bwd)
