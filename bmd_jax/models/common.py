"""Pieces the model families share: batch norm, hardtanh and the binary-layer spec."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax import layers


@dataclasses.dataclass(frozen=True)
class BinarySpec:
  """How every binary layer of a network is built: chosen once, by the config.

  Precision is one of layers.PRECISIONS; quantizers are names from quantizers.QUANTIZERS.
  """

  precision: str = "binary"
  input_quantizer: str = "ste"
  kernel_quantizer: str = "ste"
  scale_mode: str = "mean_abs"
  dtype: Any = None

  def __post_init__(self):
    layers.check_precision(self.precision)

  def conv(self, features, kernel_size=(3, 3), strides=1, name=None, **kwargs):
    return layers.BinaryConv(
        features=features, kernel_size=tuple(kernel_size), strides=strides,
        precision=self.precision, input_quantizer=self.input_quantizer,
        kernel_quantizer=self.kernel_quantizer, scale_mode=self.scale_mode,
        dtype=self.dtype, name=name, **kwargs)

  def dense(self, features, name=None, **kwargs):
    return layers.BinaryDense(
        features=features, precision=self.precision, input_quantizer=self.input_quantizer,
        kernel_quantizer=self.kernel_quantizer, scale_mode=self.scale_mode,
        dtype=self.dtype, name=name, **kwargs)


def batch_norm(train: bool, name: str | None = None, dtype: Any = None) -> nn.BatchNorm:
  # PyTorch's defaults (its momentum 0.1 is Flax's 0.9), as the reference recipes use.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def hardtanh(x):
  return jnp.clip(x, -1, 1)
