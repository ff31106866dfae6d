"""torchvision's real-valued ResNet-34 (He et al.), the teacher of ReActNet's two steps.

Standard basic blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU); where the shape
changes the shortcut is a real 1x1 strided conv + BN (``downsample_conv``, ``downsample_bn``,
torchvision's ``downsample.0``/``downsample.1``). Stem: 7x7 stride-2 conv, BN, ReLU, 3x3
stride-2 max pool; global average pooling and a linear classifier (with bias). Every layer is
full precision, so ``precision`` can only be ``"full"``; it exists so that a config's model
section reads the same for every model.

Unlike the Bi-Real ResNets of resnet_imagenet.py (a binary-network layout: a shortcut around
every conv), this is the network torchvision's ``resnet34(pretrained=True)`` loads, which
ReActNet distils from.

    resnet34_torchvision: 3, 4, 6, 3 blocks, 21,797,672 parameters at 1000 classes
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax import xla_cpu
from bmd_jax.models.common import batch_norm, real_conv


class TorchvisionBasicBlock(nn.Module):
  features: int
  strides: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = real_conv(self.features, (3, 3), self.strides, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, "bn1", self.dtype)(y))
    y = real_conv(self.features, (3, 3), name="conv2", dtype=self.dtype)(y)
    y = batch_norm(train, "bn2", self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = real_conv(self.features, (1, 1), self.strides, name="downsample_conv",
                           dtype=self.dtype, shortcut=True)(x)
      residual = batch_norm(train, "downsample_bn", self.dtype)(residual)
    return nn.relu(y + residual)


class TorchvisionResNet(nn.Module):
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 1000
  precision: str = "full"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    del estimator_args  # no binary layer: nothing to estimate
    if self.precision != "full":
      raise ValueError(f"{type(self).__name__} is a real-valued network; precision must be "
                       f"'full', not {self.precision!r}")
    x = x.astype(self.dtype or jnp.float32)
    x = real_conv(self.widths[0], (7, 7), strides=2, dtype=self.dtype, name="stem_conv")(x)
    x = nn.relu(batch_norm(train, "stem_bn", self.dtype)(x))
    x = xla_cpu.max_pool(x, 3, 2, 1)  # nn.max_pool with a fast gradient on CPU
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = TorchvisionBasicBlock(features, strides, self.dtype,
                                  name=f"stage{stage + 1}_block{block}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def resnet34_torchvision(**kwargs) -> TorchvisionResNet:
  """torchvision's real ResNet-34 (standard basic blocks, ReLU, 1x1 conv + BN downsample)."""
  return TorchvisionResNet(**{"stage_sizes": (3, 4, 6, 3), **kwargs})
