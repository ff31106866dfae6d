"""ReActNet-A: a binary network on MobileNet-V1's layout (Liu et al., ECCV 2020).

A real-valued 3x3 stride-2 stem conv with 32 channels, 13 blocks with output channels
64, 128x2, 256x2, 512x6, 1024x2, global average pooling and a real-valued classifier. The
depthwise and pointwise convs of MobileNet become full binary convs, each with a real-valued
shortcut:

    RSign -> binary 3x3 conv (C -> C, stride s) -> BN -> + shortcut (2x2 avg pool if s = 2) -> RPReLU
    RSign -> binary 1x1 conv (C -> C)           -> BN -> + shortcut                          -> RPReLU

A block that doubles the channels duplicates its 1x1 conv (``conv_1x1_a``, ``conv_1x1_b``, each
C -> C with its own BN and the same shortcut) and concatenates the two. A block strides when
its channels change, except the first (32 -> 64), as in the authors' code.

``react=False`` keeps the layout but drops ReActNet's two additions (no learnable shift before
sign, hardtanh instead of RPReLU): the baseline of the paper's ablation.

    reactnet_a: 29.34M parameters at 1000 classes
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.core import layers
from bmd_jax.core.layers import keyword
from bmd_jax.models.common import (BinaryNetwork, BinarySpec, avg_pool_2x2, batch_norm,
                                   hardtanh, real_conv, torch_padding)

BLOCK_WIDTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


class ReActBlock(nn.Module):
  out_features: int
  strides: int
  spec: BinarySpec
  react: bool = True

  def shift(self, x, name):
    return layers.LearnableBias(name=name)(x) if self.react else x

  def activation(self, x, name):
    return layers.RPReLU(name=name)(x) if self.react else hardtanh(x)

  @nn.compact
  def __call__(self, x, train: bool, estimator_args=None):
    spec, dtype = self.spec, self.spec.dtype
    features = x.shape[-1]
    if self.out_features not in (features, 2 * features):
      raise ValueError(f"a ReActNet block maps C to C or 2C channels, not {features} to "
                       f"{self.out_features}")
    y = self.shift(x, "rsign_3x3")
    y = spec.conv(features, (3, 3), self.strides, padding=torch_padding((3, 3)),
                  name="conv_3x3")(y, estimator_args)
    shortcut = avg_pool_2x2(x) if self.strides == 2 else x
    y = self.activation(batch_norm(train, "bn_3x3", dtype)(y) + shortcut, "rprelu_3x3")

    z = self.shift(y, "rsign_1x1")
    suffixes = [""] if self.out_features == features else ["_a", "_b"]
    outputs = [
        batch_norm(train, f"bn_1x1{s}", dtype)(
            spec.conv(features, (1, 1), name=f"conv_1x1{s}")(z, estimator_args)) + y
        for s in suffixes]
    return self.activation(jnp.concatenate(outputs, axis=-1), "rprelu_1x1")


class ReActNetA(BinaryNetwork):
  stem_width: int = 32
  block_widths: Sequence[int] = BLOCK_WIDTHS
  num_classes: int = 1000
  react: bool = True
  input_quantizer: str = keyword("approx_sign")

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    spec = self.spec
    x = x.astype(self.dtype or jnp.float32)
    x = real_conv(self.stem_width, (3, 3), strides=2, dtype=self.dtype, name="stem_conv")(x)
    x = batch_norm(train, "stem_bn", self.dtype)(x)
    for i, features in enumerate(self.block_widths):
      strides = 2 if features != x.shape[-1] and i > 0 else 1
      x = ReActBlock(features, strides, spec, self.react, name=f"block{i + 1:02d}")(
          x, train, estimator_args)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def reactnet_a(**kwargs) -> ReActNetA:
  """ReActNet-A (MobileNet-V1 layout, binary 3x3 + 1x1 convs, RSign/RPReLU)."""
  return ReActNetA(**kwargs)
