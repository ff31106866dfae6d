"""A binary network of one's own, built from bmd_jax's layers.

A real stem conv, `depth` binary 3x3 convs (the second one downsamples), global average pooling
and a real classifier named ``classifier`` (the tools read the number of classes from it).
``width`` and ``depth`` are its own options: fields of the config's ``model`` block.

The last binary conv opts out of the kurtosis and WDM terms with ``regularize=False``: the
convs before it are regularized by bmd_jax's rule (every conv but the first), it is not.
"""

import flax.linen as nn
import jax.numpy as jnp

from bmd_jax.core import layers
from bmd_jax.models.common import batch_norm, hardtanh


class TinyBinaryNet(layers.BinaryFields):
  """The binary fields (precision, quantizers, scale mode, dtype, ...) come from
  layers.BinaryFields, so the model block's fields reach every binary layer."""

  num_classes: int = 10
  width: int = 32
  depth: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False, estimator_args=None):
    binary = layers.binary_fields(self)
    x = x.astype(self.dtype or jnp.float32)
    x = layers.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name="stem")(x)
    x = hardtanh(batch_norm(train, "stem_bn", self.dtype)(x))
    for i in range(self.depth):
      last = i == self.depth - 1
      conv = layers.BinaryConv(self.width, strides=2 if i == 1 else 1, name=f"conv{i}",
                               regularize=False if last else None, **binary)
      x = hardtanh(batch_norm(train, f"bn{i}", self.dtype)(conv(x, estimator_args)))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)
