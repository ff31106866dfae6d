"""Binarized Flax linen layers: BinaryConv, BinaryDense, LearnableBias, RPReLU; Conv and
BatchNorm (Flax's, with fast per-channel sums on CPU: channel_sums.py).

A binary layer keeps a real-valued *latent* kernel, stored as the parameter
``latent_kernel`` (full-precision layers use Flax's ``kernel``): the losses find the
binarized layers of any model by that name. One switch, ``precision``, picks what the
layer binarizes:

- ``"full"``: nothing (a real-valued network with the same parameters);
- ``"binary_activations"``: the input only (step 1 of the two-step recipe);
- ``"binary"``: input and kernel (step 2).

The parameter tree is the same in every precision, so a step-1 checkpoint initializes
step 2 directly.

A conv on a block's shortcut path (a real downsample / projection conv, or a binary one) is
marked by its field ``shortcut``, which ``Conv`` (Flax's full-precision conv) and
``BinaryConv`` have: which layers a loss covers, and in what order, is read from that mark
(models/layer_order.py), whatever the module is named. A layer's field ``regularize`` (on
``Conv``, ``BinaryConv`` and ``BinaryDense``) overrides that rule for it: True puts it under
the kurtosis and WDM terms, False leaves it out of both, None (the default) keeps the rule,
so a user's network built from these layers chooses per layer.

Input and kernel quantizers are separate and named (see `quantizers.ESTIMATORS`). Their
traced arguments (EDE's t and k, a clip value, ...) arrive at call time through
``estimator_args``, a mapping from quantizer name to keyword arguments, so a schedule
changes them without recompiling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmd_jax import xla_cpu
from bmd_jax.core import quantizers, saturation

PRECISIONS = ("full", "binary_activations", "binary")
# The parameter name of every binary layer's real-valued latent weight: losses and tools find
# the binarized layers of any model by it (full-precision layers use Flax's ``kernel``).
LATENT_KERNEL = "latent_kernel"
EstimatorArgs = Mapping[str, Mapping[str, Any]] | None


def is_shortcut(module: nn.Module) -> bool:
  """Whether a module is a conv marked as a shortcut/downsample conv (its ``shortcut`` field)."""
  return bool(getattr(module, "shortcut", False))


def regularize_mark(module: nn.Module) -> bool | None:
  """A layer's own choice of the kurtosis and WDM terms (its ``regularize`` field): True in,
  False out, None where the models' rule decides (models/layer_order.py)."""
  mark = getattr(module, "regularize", None)
  return None if mark is None else bool(mark)


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
  return precision


def quantize(x: jax.Array, name: str, estimator_args: EstimatorArgs = None) -> jax.Array:
  """Applies the quantizer registered as `name` with its arguments from estimator_args."""
  kwargs = dict((estimator_args or {}).get(name, {}))
  return quantizers.get_quantizer(name)(x, **kwargs)


def keyword(default):
  """A keyword-only module field: the shared binary fields come first in every class that
  inherits them, and would otherwise push a layer's own fields (features, ...) behind them."""
  return dataclasses.field(default=default, kw_only=True)


class BinaryFields(nn.Module):
  """The fields every binary layer and every binary network takes, declared once here.

  A network (models/common.py) passes its own to each layer it builds. ``store_binary_input``
  puts an optimization barrier on a binary layer's binarized input in programs for the CPU
  (none elsewhere): where XLA:CPU keeps it (cpu_barriers.py; the train step's program), the
  weight gradient reads that stored input instead of recomputing batch norm, residual, hardtanh
  and sign inside its transpose; where XLA strips it, nothing changes. Values are unchanged.
  """

  precision: str = keyword("binary")
  input_quantizer: str = keyword("ste")
  kernel_quantizer: str = keyword("ste")
  scale_mode: str = keyword("mean_abs")
  dtype: Any = keyword(None)
  store_binary_input: bool = keyword(False)


def binary_fields(module: BinaryFields) -> dict[str, Any]:
  """{field: value} of the shared binary fields of a layer or network."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(BinaryFields)
          if f.name not in ("parent", "name")}


class _BinaryBase(BinaryFields):
  """What binary conv and dense share: the latent kernel, the operands, the bias."""

  use_bias: bool = keyword(False)
  regularize: bool | None = keyword(None)  # under the kurtosis and WDM terms (module docstring)

  def binary_operands(self, x, latent, estimator_args):
    check_precision(self.precision)
    if self.precision == "full":
      return x, latent
    self.sow_saturation("input_saturation", x, self.input_quantizer, estimator_args)
    x = quantize(x, self.input_quantizer, estimator_args)
    if self.precision == "binary_activations":
      return x, latent
    seen = quantizers.irnet_standardize(latent)[0] if self.scale_mode == "irnet" else latent
    self.sow_saturation("weight_saturation", seen, self.kernel_quantizer, estimator_args)
    kwargs = dict((estimator_args or {}).get(self.kernel_quantizer, {}))
    kernel = quantizers.binarize_kernel(
        latent, quantizers.get_quantizer(self.kernel_quantizer), self.scale_mode, **kwargs)
    return x, kernel

  def sow_saturation(self, name, x, quantizer, estimator_args):
    """Records the share of `x` where the quantizer passes under 1% of its peak gradient
    (core/saturation.py), only when the caller asked for 'intermediates' (a diagnostics
    pass, training/diagnostics.py): a train step computes nothing here."""
    if self.is_mutable_collection("intermediates"):
      kwargs = dict((estimator_args or {}).get(quantizer, {}))
      self.sow("intermediates", name, saturation.saturated_share(
          quantizers.get_quantizer(quantizer), x, **kwargs))

  def operands(self, x, kernel_shape, estimator_args):
    """(binary input, binary kernel, compute dtype) from x and the latent kernel.

    The kernel is binarized from the float32 latent weights (IR-Net's standardization and the
    scales need float32) and cast to the compute dtype after: +-1 times a per-channel scale,
    exact in bfloat16 up to the scale's rounding. XLA accumulates bfloat16 convolutions and
    matmuls in float32 (cuDNN/cuBLAS on GPU; upcast on CPU).
    """
    latent = self.param(LATENT_KERNEL, self.kernel_init, kernel_shape, jnp.float32)
    dtype = self.dtype or x.dtype
    x, kernel = self.binary_operands(x.astype(dtype), latent, estimator_args)
    if self.store_binary_input:
      x = jax.lax.platform_dependent(x, cpu=jax.lax.optimization_barrier, default=lambda x: x)
    return x, kernel.astype(dtype), dtype

  def add_bias(self, y, dtype):
    if not self.use_bias:
      return y
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y + xla_cpu.per_channel(bias, y.shape, dtype)


class BinaryConv(_BinaryBase):
  """2-D convolution (NHWC input, HWIO kernel) with binarized input and kernel."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] | int = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  kernel_init: Any = nn.initializers.kaiming_normal()
  shortcut: bool = keyword(False)  # a conv on a block's shortcut path (module docstring)

  @nn.compact
  def __call__(self, x: jax.Array, estimator_args: EstimatorArgs = None) -> jax.Array:
    kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
    x, kernel, dtype = self.operands(x, kernel_shape, estimator_args)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    y = xla_cpu.conv_general_dilated(
        x, kernel, window_strides=strides, padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return self.add_bias(y, dtype)


class Conv(nn.Conv):
  """Flax's full-precision ``nn.Conv`` (same params, same automatic names) with the
  ``shortcut`` mark: first convs, real downsample / projection convs. Its weight gradient is
  conv_grads' (chunked over the batch on CPU where that is faster)."""

  shortcut: bool = keyword(False)
  regularize: bool | None = keyword(None)  # under the kurtosis and WDM terms (module docstring)
  conv_general_dilated: Any = xla_cpu.conv_general_dilated


class BinaryDense(_BinaryBase):
  """Dense layer with binarized input and kernel ((in, out) kernel)."""

  features: int
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, estimator_args: EstimatorArgs = None) -> jax.Array:
    x, kernel, dtype = self.operands(x, (x.shape[-1], self.features), estimator_args)
    return self.add_bias(x @ kernel, dtype)


class LearnableBias(nn.Module):
  """A learnable per-channel shift (ReActNet's RSign is LearnableBias followed by sign)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return x + xla_cpu.per_channel(bias, x.shape, x.dtype)


class RPReLU(nn.Module):
  """ReActNet's RPReLU: shift, PReLU with a per-channel slope, shift."""

  slope_init: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = (x.shape[-1],)
    shift_in = self.param("shift_in", nn.initializers.zeros, channels, jnp.float32)
    slope = self.param("slope", nn.initializers.constant(self.slope_init), channels, jnp.float32)
    shift_out = self.param("shift_out", nn.initializers.zeros, channels, jnp.float32)
    def broadcast(v):  # its gradient is a fast channel sum (channel_sums)
      return xla_cpu.per_channel(v, x.shape, x.dtype)
    y = x + broadcast(shift_in)
    y = jnp.where(y >= 0, y, broadcast(slope) * y)
    return y + broadcast(shift_out)


class BatchNorm(nn.BatchNorm):
  """Flax's BatchNorm (the same fields, variables, initial values and results up to float
  rounding) computed through `channel_sums`: on CPU its statistics and every gradient sum run
  as products with ones, 5x faster than XLA:CPU's reductions (docs/BENCHMARKS.md). Only the
  form the models use: the last axis, statistics over the whole (jit-global) batch, no mask.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    if self.axis not in (-1, x.ndim - 1) or self.axis_name is not None or mask is not None:
      raise NotImplementedError("layers.BatchNorm normalizes over every axis but the last, "
                                "without axis_name or mask; use flax.linen.BatchNorm for others")
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = (self.param("scale", self.scale_init, features, self.param_dtype) if self.use_scale
             else jnp.ones(features, jnp.float32))
    bias = (self.param("bias", self.bias_init, features, self.param_dtype) if self.use_bias
            else jnp.zeros(features, jnp.float32))
    out_dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
    if use_running_average:
      mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
      y = ((x.astype(jnp.float32) - xla_cpu.per_channel(ra_mean.value, x.shape, jnp.float32))
           * xla_cpu.per_channel(mul, x.shape, jnp.float32)
           + xla_cpu.per_channel(bias, x.shape, jnp.float32))
      return y.astype(out_dtype)
    y, mean, var = xla_cpu.batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(out_dtype)
