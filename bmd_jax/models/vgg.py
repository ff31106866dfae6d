"""VGG-Small for CIFAR in the IR-Net style.

Six 3x3 convs of 128, 128, 256, 256, 512, 512 channels; a 2x2 max pool after the 2nd, 4th and
6th conv (before its BN, as IR-Net's code does), BN and hardtanh after each, a real-valued
classifier on the flattened 4x4x512 features (at 32x32 inputs). The first conv and the
classifier are full precision; convs 1-5 are binary.

    vgg_small: 4.66M parameters at 32x32 and 10 classes
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.core.layers import keyword
from bmd_jax.models.common import BinaryNetwork, batch_norm, hardtanh, real_conv, torch_padding


class VGGSmall(BinaryNetwork):
  widths: Sequence[int] = (128, 128, 256, 256, 512, 512)
  num_classes: int = 10
  input_quantizer: str = keyword("ede")
  kernel_quantizer: str = keyword("ede")
  scale_mode: str = keyword("irnet")

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    spec = self.spec
    x = x.astype(self.dtype or jnp.float32)
    x = real_conv(self.widths[0], (3, 3), dtype=self.dtype, name="stem_conv")(x)
    x = hardtanh(batch_norm(train, "stem_bn", self.dtype)(x))
    for i, features in enumerate(self.widths[1:], start=1):
      x = spec.conv(features, padding=torch_padding((3, 3)), name=f"conv{i}")(x, estimator_args)
      if i % 2 == 1:  # pool after the 2nd, 4th and 6th conv of the network
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = hardtanh(batch_norm(train, f"bn{i}", self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def vgg_small(**kwargs) -> VGGSmall:
  """VGG-Small (IR-Net, LQ-Nets): 128-128-M-256-256-M-512-512-M, binary but the first conv."""
  return VGGSmall(**kwargs)
