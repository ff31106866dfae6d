"""ImageNet ResNet-18/34 in the Bi-Real style, optionally with ReActNet's RSign and RPReLU.

Every binary 3x3 conv has its own real-valued shortcut (Bi-Real Net): a basic block is two

    [RSign shift] -> binary conv -> BN -> + shortcut -> activation

units, the activation being hardtanh (IR-Net's ImageNet code) or, with ``react=True``,
ReActNet's RPReLU, and RSign's learnable per-channel shift (`layers.LearnableBias`, named
``rsign1``/``rsign2``) placed before each binary conv. Where the shape changes, the first
unit's shortcut is Bi-Real's real-valued downsample: 2x2 average pool, 1x1 full-precision conv,
BN (``downsample_conv``, ``downsample_bn``). The stem (7x7 stride-2 conv, BN, hardtanh unless
``react``, 3x3 stride-2 max pool) and the classifier are full precision.

    resnet18: 2, 2, 2, 2 basic blocks (16 binary convs), 11.69M parameters at 1000 classes
    resnet34: 3, 4, 6, 3 basic blocks (32 binary convs), 21.80M parameters at 1000 classes

Defaults follow Bi-Real Net / ReActNet: ApproxSign on activations, clipped STE on weights,
per-output-channel mean |W| scale.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.core import layers
from bmd_jax import xla_cpu
from bmd_jax.core.layers import keyword
from bmd_jax.models.common import (BinaryNetwork, BinarySpec, avg_pool_2x2, batch_norm,
                                   hardtanh, real_conv, torch_padding)


class BiRealBlock(nn.Module):
  """Two binary 3x3 convs, each with a real-valued shortcut around it."""

  # One block here is two of Bi-Real's (each one conv); the downsample belongs to the first,
  # which registers it after its conv (models/layer_order.py).
  definition_order: ClassVar[tuple[str, ...]] = ("conv1", "downsample_conv", "conv2")
  features: int
  strides: int
  spec: BinarySpec
  react: bool = False

  def unit(self, x, residual, index, strides, train, estimator_args):
    if self.react:
      x = layers.LearnableBias(name=f"rsign{index}")(x)
    y = self.spec.conv(self.features, (3, 3), strides, padding=torch_padding((3, 3)),
                       name=f"conv{index}")(x, estimator_args)
    y = batch_norm(train, f"bn{index}", self.spec.dtype)(y) + residual
    return layers.RPReLU(name=f"rprelu{index}")(y) if self.react else hardtanh(y)

  @nn.compact
  def __call__(self, x, train: bool, estimator_args=None):
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.strides != 1:
        residual = avg_pool_2x2(residual)
      residual = real_conv(self.features, (1, 1), dtype=self.spec.dtype,
                           name="downsample_conv", shortcut=True)(residual)
      residual = batch_norm(train, "downsample_bn", self.spec.dtype)(residual)
    y = self.unit(x, residual, 1, self.strides, train, estimator_args)
    return self.unit(y, y, 2, 1, train, estimator_args)


class BiRealResNet(BinaryNetwork):
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 1000
  react: bool = False
  input_quantizer: str = keyword("approx_sign")

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    spec = self.spec
    x = x.astype(self.dtype or jnp.float32)
    x = real_conv(self.widths[0], (7, 7), strides=2, dtype=self.dtype, name="stem_conv")(x)
    x = batch_norm(train, "stem_bn", self.dtype)(x)
    if not self.react:
      x = hardtanh(x)
    x = xla_cpu.max_pool(x, 3, 2, 1)  # nn.max_pool with a fast gradient on CPU
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BiRealBlock(features, strides, spec, self.react,
                        name=f"stage{stage + 1}_block{block}")(x, train, estimator_args)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def resnet18(**kwargs) -> BiRealResNet:
  """Bi-Real ResNet-18 (``react=True``: ReActNet's ResNet-18 variant)."""
  return BiRealResNet(stage_sizes=(2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> BiRealResNet:
  """Bi-Real ResNet-34 (``react=True``: with RSign and RPReLU)."""
  return BiRealResNet(stage_sizes=(3, 4, 6, 3), **kwargs)
