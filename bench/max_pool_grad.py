"""Max pool forward and backward: Flax's nn.max_pool against bmd_jax.xla_cpu.pooling.max_pool.

    python bench/max_pool_grad.py                      # ResNet-18's stem pool, batch 32
    python bench/max_pool_grad.py --shape=8,112,112,64

Both jitted as the gradient of sum(pool(x) * w); each is the median of --reps calls,
alternating over --rounds rounds; the gradients are checked equal first.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alternating_rounds import arguments, compare  # noqa: E402


def main():
  args, shape = arguments(__doc__, "32,112,112,64", 5)  # before any JAX computation
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bmd_jax.xla_cpu import pooling

  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  pools = {"flax": lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
           "slices": lambda x: pooling.max_pool(x, 3, 2, 1)}
  w = jax.random.normal(jax.random.PRNGKey(1), jax.eval_shape(pools["flax"], x).shape)
  grads = {name: jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x) * w)))
           for name, pool in pools.items()}
  np.testing.assert_allclose(grads["slices"](x), grads["flax"](x), rtol=1e-6, atol=1e-6)
  compare(grads, x, args.reps, args.rounds, "flax", "slices", f"shape {shape}")


if __name__ == "__main__":
  main()
