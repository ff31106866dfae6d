"""CIFAR ResNets in the IR-Net style (He et al.'s CIFAR ResNet with binary 3x3 convs).

Each basic block: binary conv -> BN -> + shortcut -> hardtanh, twice, with a real-valued
shortcut around every binary conv (IR-Net's block). Downsampling shortcuts are option A
(stride-2 subsampling and zero channel padding, no parameters; IR-Net's ResNet-20) or
option B (a binary 1x1 conv + BN, named ``shortcut``, regularized or not by the losses'
``include_shortcuts``; the ResNet-18 of IR-Net's and ReCU's CIFAR code).

Convolutions pad k // 2 on every side, as the PyTorch references do, so a stride-2 conv
samples the pixels that option A's ``x[::2]`` keeps.

    resnet20:       16/32/64 channels, 3 blocks a stage, option A   (0.27M parameters)
    resnet18_cifar: 64/128/256/512 channels, 2 blocks a stage, option B   (11.2M parameters)
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.models.common import (BinarySpec, batch_norm, hardtanh, real_conv,
                                   torch_padding)


class BasicBlock(nn.Module):
  features: int
  strides: int
  spec: BinarySpec
  shortcut: str = "A"

  @nn.compact
  def __call__(self, x, train: bool, estimator_args=None):
    dtype = self.spec.dtype
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut not in ("A", "B"):
        raise ValueError(f"unknown shortcut option {self.shortcut!r}; choose 'A' or 'B'")
      if self.shortcut == "A":
        residual = x[:, ::self.strides, ::self.strides, :]
        pad = self.features - x.shape[-1]
        residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
      else:
        residual = self.spec.conv(self.features, (1, 1), self.strides, padding=torch_padding((1, 1)),
                                  name="shortcut_conv")(x, estimator_args)
        residual = batch_norm(train, "shortcut_bn", dtype)(residual)
    padding = torch_padding((3, 3))
    y = self.spec.conv(self.features, strides=self.strides, padding=padding, name="conv1")(
        x, estimator_args)
    y = hardtanh(batch_norm(train, "bn1", dtype)(y) + residual)
    z = self.spec.conv(self.features, padding=padding, name="conv2")(y, estimator_args)
    return hardtanh(batch_norm(train, "bn2", dtype)(z) + y)


class CifarResNet(nn.Module):
  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10
  shortcut: str = "A"
  precision: str = "binary"
  input_quantizer: str = "ede"
  kernel_quantizer: str = "ede"
  scale_mode: str = "irnet"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    spec = BinarySpec(self.precision, self.input_quantizer, self.kernel_quantizer,
                      self.scale_mode, self.dtype)
    x = x.astype(self.dtype or jnp.float32)
    x = real_conv(self.widths[0], (3, 3), dtype=self.dtype, name="stem_conv")(x)
    x = hardtanh(batch_norm(train, "stem_bn", self.dtype)(x))
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, spec, self.shortcut,
                       name=f"stage{stage + 1}_block{block}")(x, train, estimator_args)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def resnet20(**kwargs) -> CifarResNet:
  """ResNet-20 for CIFAR (16/32/64 channels, 3 blocks a stage, option-A shortcuts)."""
  return CifarResNet(**{"stage_sizes": (3, 3, 3), "widths": (16, 32, 64), **kwargs})


def resnet18_cifar(**kwargs) -> CifarResNet:
  """ResNet-18 for CIFAR (64..512 channels, 2 blocks a stage, binary 1x1 shortcut convs)."""
  return CifarResNet(**{"stage_sizes": (2, 2, 2, 2), "widths": (64, 128, 256, 512),
                        "shortcut": "B", **kwargs})
