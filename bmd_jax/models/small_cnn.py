"""A small binary CNN for the built-in digits data (8x8 grey images).

A real-valued stem conv, three binary 3x3 convs (the last two downsample), global
average pooling and a real-valued classifier: the smallest network that exercises every
part of the method (binarized hidden convs, first conv and classifier in full precision).
"""

from __future__ import annotations


import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.models.common import BinaryNetwork, batch_norm, hardtanh


class SmallBinaryCNN(BinaryNetwork):
  num_classes: int = 10
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    spec = self.spec
    x = x.astype(self.dtype or jnp.float32)
    x = nn.Conv(self.width // 2, (3, 3), use_bias=False, dtype=self.dtype, name="stem_conv")(x)
    x = hardtanh(batch_norm(train, "stem_bn", self.dtype)(x))
    for i, (features, stride) in enumerate(
        [(self.width, 1), (self.width, 2), (2 * self.width, 2)]):
      x = spec.conv(features, strides=stride, name=f"conv{i}")(x, estimator_args)
      x = hardtanh(batch_norm(train, f"bn{i}", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)
