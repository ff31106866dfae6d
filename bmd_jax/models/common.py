"""Pieces the model families share: batch norm, hardtanh, the binary-layer spec, padding and
the real-valued convolutions and pools around the binary ones."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmd_jax.core import layers


@dataclasses.dataclass(frozen=True)
class BinarySpec:
  """How every binary layer of a network is built: the network's binary fields
  (layers.BinaryFields), handed to its blocks so each layer gets the same ones."""

  fields: tuple[tuple[str, Any], ...]

  @property
  def dtype(self):
    return dict(self.fields)["dtype"]

  def conv(self, features, kernel_size=(3, 3), strides=1, name=None, **kwargs):
    return layers.BinaryConv(features=features, kernel_size=tuple(kernel_size), strides=strides,
                             name=name, **dict(self.fields), **kwargs)

  def dense(self, features, name=None, **kwargs):
    return layers.BinaryDense(features=features, name=name, **dict(self.fields), **kwargs)


class BinaryNetwork(layers.BinaryFields):
  """Base of the binary networks: precision, quantizers, scale mode, dtype and the input
  barrier are the fields of layers.BinaryFields (a family may change their defaults)."""

  @property
  def spec(self) -> BinarySpec:
    layers.check_precision(self.precision)
    return BinarySpec(tuple(layers.binary_fields(self).items()))


def batch_norm(train: bool, name: str | None = None, dtype: Any = None) -> layers.BatchNorm:
  # PyTorch's defaults (its momentum 0.1 is Flax's 0.9), as the reference recipes use.
  return layers.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=dtype, name=name)


def hardtanh(x):
  """clip(x, -1, 1) with PyTorch's gradient: 0 at exactly +-1 (jnp.clip gives 0.5 there).

  Binary convs give integer outputs, so pre-activations often sit exactly on +-1.
  """
  return jnp.where(jnp.abs(x) < 1, x, jax.lax.stop_gradient(jnp.sign(x)))


def torch_padding(kernel_size) -> tuple[tuple[int, int], tuple[int, int]]:
  """Zero padding of k // 2 on every side, as the reference (PyTorch) models' padding=k//2.

  Flax's "SAME" pads a stride-2 convolution at the bottom/right only, which moves its sampling
  grid one pixel away from the references' and from a strided shortcut (x[::2] samples the
  pixels a symmetric pad centres on); symmetric padding keeps both aligned.
  """
  kh, kw = kernel_size
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def real_conv(features, kernel_size, strides=1, name=None, dtype=None,
              shortcut=False) -> layers.Conv:
  """A full-precision conv (param ``kernel``, no bias): first convs and real downsample convs
  (``shortcut=True``: the mark the losses' layer selection reads)."""
  return layers.Conv(features, tuple(kernel_size), strides=strides,
                     padding=torch_padding(kernel_size), use_bias=False, dtype=dtype, name=name,
                     shortcut=shortcut)


def avg_pool_2x2(x):
  """2x2 average pool, stride 2; an odd edge is averaged over the pixels it has (ceil mode)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)
