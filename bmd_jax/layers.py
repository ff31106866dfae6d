"""Binarized Flax linen layers: BinaryConv, BinaryDense, LearnableBias, RPReLU.

A binary layer keeps a real-valued *latent* kernel, stored as the parameter
``latent_kernel`` (full-precision layers use Flax's ``kernel``): the losses find the
binarized layers of any model by that name. One switch, ``precision``, picks what the
layer binarizes:

- ``"full"``: nothing (a real-valued network with the same parameters);
- ``"binary_activations"``: the input only (step 1 of the two-step recipe);
- ``"binary"``: input and kernel (step 2).

The parameter tree is the same in every precision, so a step-1 checkpoint initializes
step 2 directly.

Input and kernel quantizers are separate and named (see `quantizers.QUANTIZERS`). Their
traced arguments (EDE's t and k, a clip value, ...) arrive at call time through
``estimator_args``, a mapping from quantizer name to keyword arguments, so a schedule
changes them without recompiling.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmd_jax import quantizers, xla_flags

PRECISIONS = ("full", "binary_activations", "binary")
EstimatorArgs = Mapping[str, Mapping[str, Any]] | None


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
  return precision


def stored_on_cpu(x: jax.Array) -> jax.Array:
  """`x` behind an optimization barrier on XLA:CPU when barriers are kept (xla_flags.py).

  The barrier makes the weight gradient's transpose read the stored binary input instead of
  recomputing batch norm, residual, hardtanh and sign inside it; values are unchanged.
  """
  if jax.default_backend() == "cpu" and xla_flags.cpu_barriers_active():
    return jax.lax.optimization_barrier(x)
  return x


def quantize(x: jax.Array, name: str, estimator_args: EstimatorArgs = None) -> jax.Array:
  """Applies the quantizer registered as `name` with its arguments from estimator_args."""
  kwargs = dict((estimator_args or {}).get(name, {}))
  return quantizers.get_quantizer(name)(x, **kwargs)


class _BinaryBase(nn.Module):
  """What binary conv and dense share: the precision switch and the two quantizers."""

  def binary_operands(self, x, latent, estimator_args):
    # The kernel is binarized from the float32 latent weights (IR-Net's standardization and
    # the scales need float32) and cast to the compute dtype after: +-1 times a per-channel
    # scale, exact in bfloat16 up to the scale's rounding. XLA accumulates bfloat16
    # convolutions and matmuls in float32 (cuDNN/cuBLAS on GPU; upcast on CPU).
    check_precision(self.precision)
    if self.precision == "full":
      return x, latent
    x = quantize(x, self.input_quantizer, estimator_args)
    if self.precision == "binary_activations":
      return x, latent
    kwargs = dict((estimator_args or {}).get(self.kernel_quantizer, {}))
    kernel = quantizers.binarize_kernel(
        latent, quantizers.get_quantizer(self.kernel_quantizer), self.scale_mode, **kwargs)
    return x, kernel


class BinaryConv(_BinaryBase):
  """2-D convolution (NHWC input, HWIO kernel) with binarized input and kernel."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] | int = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = False
  precision: str = "binary"
  input_quantizer: str = "ste"
  kernel_quantizer: str = "ste"
  scale_mode: str = "mean_abs"
  dtype: Any = None
  kernel_init: Any = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x: jax.Array, estimator_args: EstimatorArgs = None) -> jax.Array:
    kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
    latent = self.param("latent_kernel", self.kernel_init, kernel_shape, jnp.float32)
    dtype = self.dtype or x.dtype
    x, kernel = self.binary_operands(x.astype(dtype), latent, estimator_args)
    kernel = kernel.astype(dtype)
    x = stored_on_cpu(x)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(dtype)
    return y


class BinaryDense(_BinaryBase):
  """Dense layer with binarized input and kernel ((in, out) kernel)."""

  features: int
  use_bias: bool = False
  precision: str = "binary"
  input_quantizer: str = "ste"
  kernel_quantizer: str = "ste"
  scale_mode: str = "mean_abs"
  dtype: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, estimator_args: EstimatorArgs = None) -> jax.Array:
    latent = self.param("latent_kernel", self.kernel_init, (x.shape[-1], self.features),
                        jnp.float32)
    dtype = self.dtype or x.dtype
    x, kernel = self.binary_operands(x.astype(dtype), latent, estimator_args)
    kernel = kernel.astype(dtype)
    y = x @ kernel
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(dtype)
    return y


class LearnableBias(nn.Module):
  """A learnable per-channel shift (ReActNet's RSign is LearnableBias followed by sign)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return x + bias.astype(x.dtype)


class RPReLU(nn.Module):
  """ReActNet's RPReLU: shift, PReLU with a per-channel slope, shift."""

  slope_init: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = (x.shape[-1],)
    shift_in = self.param("shift_in", nn.initializers.zeros, channels, jnp.float32)
    slope = self.param("slope", nn.initializers.constant(self.slope_init), channels, jnp.float32)
    shift_out = self.param("shift_out", nn.initializers.zeros, channels, jnp.float32)
    y = x + shift_in.astype(x.dtype)
    y = jnp.where(y >= 0, y, slope.astype(x.dtype) * y)
    return y + shift_out.astype(x.dtype)
