"""IR-Net's CIFAR-10 ResNets (binary 3x3 convs; first conv, shortcuts and classifier real).

Two block designs, each its original's (docs/FIDELITY.md cites the files):

- ``per_conv`` (IR-Net's ResNet-20, ``BasicBlock_1w1a``): a shortcut around every binary conv,

      x -> conv1 -> BN -> + shortcut(x) -> hardtanh -> y -> conv2 -> BN -> + y -> hardtanh

  the downsampling shortcut being option A (stride-2 subsampling and zero channel padding, no
  parameters);
- ``basic`` (IR-Net's ResNet-18, the standard basic block): one shortcut per two convs,

      x -> conv1 -> BN -> hardtanh -> conv2 -> BN -> + shortcut(x) -> hardtanh

  the shortcut being the identity or, where the shape changes, the submodule ``shortcut``: a
  real-valued 1x1 conv (param ``kernel``, stride s) and its BN.

Both networks: a real 3x3 stem conv and BN (followed by hardtanh in ResNet-20 only), global
average pooling, a BatchNorm1d (``classifier_bn``) and a real dense classifier. Convolutions pad
k // 2 on every side, as the PyTorch originals do, so a stride-2 conv samples the pixels that
option A's ``x[::2]`` and the strided 1x1 shortcut keep.

    resnet20:       16/32/64 channels, 3 blocks a stage, per_conv    (269,850 parameters)
    resnet18_cifar: 64/128/256/512 channels, 2 blocks a stage, basic (11,174,986 parameters)
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.core.layers import keyword
from bmd_jax.models.common import (BinaryNetwork, BinarySpec, batch_norm, hardtanh,
                                    real_conv, torch_padding)

BLOCKS = ("per_conv", "basic")


def option_a_shortcut(x, features: int, strides: int):
  """He et al.'s option A: subsample by the stride and zero-pad the new channels evenly."""
  x = x[:, ::strides, ::strides, :]
  pad = features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))


class _Block(nn.Module):
  """What both blocks share: their fields and the binary 3x3 conv + BN unit."""

  features: int
  strides: int
  spec: BinarySpec

  def conv_bn(self, x, index, strides, train, estimator_args):
    y = self.spec.conv(self.features, strides=strides, padding=torch_padding((3, 3)),
                       name=f"conv{index}")(x, estimator_args)
    return batch_norm(train, f"bn{index}", self.spec.dtype)(y)

  def changes_shape(self, x) -> bool:
    return self.strides != 1 or x.shape[-1] != self.features


class PerConvBlock(_Block):
  """IR-Net's ResNet-20 block: a real-valued shortcut around each of its two binary convs."""

  @nn.compact
  def __call__(self, x, train: bool, estimator_args=None):
    residual = option_a_shortcut(x, self.features, self.strides) if self.changes_shape(x) else x
    y = hardtanh(self.conv_bn(x, 1, self.strides, train, estimator_args) + residual)
    return hardtanh(self.conv_bn(y, 2, 1, train, estimator_args) + y)


class Shortcut(nn.Module):
  """A real-valued 1x1 conv (stride s) and its BN: the projection shortcut of a basic block."""

  features: int
  strides: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = real_conv(self.features, (1, 1), self.strides, name="conv", dtype=self.dtype,
                  shortcut=True)(x)
    return batch_norm(train, "bn", self.dtype)(x)


class BasicBlock(_Block):
  """IR-Net's ResNet-18 block: two binary convs, one shortcut around both."""

  @nn.compact
  def __call__(self, x, train: bool, estimator_args=None):
    y = hardtanh(self.conv_bn(x, 1, self.strides, train, estimator_args))
    y = self.conv_bn(y, 2, 1, train, estimator_args)
    # Called after the convs, as the original defines it (its module order).
    residual = x
    if self.changes_shape(x):
      residual = Shortcut(self.features, self.strides, self.spec.dtype, name="shortcut")(x, train)
    return hardtanh(y + residual)


class CifarResNet(BinaryNetwork):
  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10
  block: str = "per_conv"  # one of BLOCKS
  stem_hardtanh: bool = True
  input_quantizer: str = keyword("ede")
  kernel_quantizer: str = keyword("ede")
  scale_mode: str = keyword("irnet")

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; choose one of {BLOCKS}")
    block = PerConvBlock if self.block == "per_conv" else BasicBlock
    spec = self.spec
    x = x.astype(self.dtype or jnp.float32)
    x = real_conv(self.widths[0], (3, 3), dtype=self.dtype, name="stem_conv")(x)
    x = batch_norm(train, "stem_bn", self.dtype)(x)
    if self.stem_hardtanh:
      x = hardtanh(x)
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.widths)):
      for index in range(blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = block(features, strides, spec, name=f"stage{stage + 1}_block{index}")(
            x, train, estimator_args)
    x = jnp.mean(x, axis=(1, 2))
    x = batch_norm(train, "classifier_bn", self.dtype)(x)  # IR-Net's BatchNorm1d
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def resnet20(**kwargs) -> CifarResNet:
  """IR-Net's ResNet-20 (16/32/64 channels, 3 blocks a stage, per-conv option-A shortcuts)."""
  return CifarResNet(**{"stage_sizes": (3, 3, 3), "widths": (16, 32, 64), "block": "per_conv",
                        "stem_hardtanh": True, **kwargs})


def resnet18_cifar(**kwargs) -> CifarResNet:
  """IR-Net's CIFAR ResNet-18 (64..512 channels, 2 basic blocks a stage, real 1x1 shortcuts)."""
  return CifarResNet(**{"stage_sizes": (2, 2, 2, 2), "widths": (64, 128, 256, 512),
                        "block": "basic", "stem_hardtanh": False, **kwargs})
