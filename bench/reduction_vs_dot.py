"""A per-channel sum over an activation, as XLA:CPU's reduction and as a matrix product.

    python bench/reduction_vs_dot.py                     # ResNet-18's stage-1 activation
    python bench/reduction_vs_dot.py --shape=128,32,32,16   # ResNet-20's

The ResNet-18 train step's profile (bench/profile_train_step.py --model=resnet18) spends most
of its traced time in per-channel reductions over activations: batch-norm statistics and their
gradients, and the gradients of per-channel parameters (RPReLU, RSign, LearnableBias).
XLA:CPU lowers them as `reduce-window` / `*_reduce_fusion` loops; the same sum written as a
product with a vector of ones runs as a matrix-vector product. Both are jitted; each is the
median of --reps calls, alternating over --rounds rounds; results are checked equal first.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alternating_rounds import arguments, compare  # noqa: E402


def main():
  args, shape = arguments(__doc__, "32,56,56,64", 10)  # before any JAX computation
  import jax
  import jax.numpy as jnp
  import numpy as np

  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ones = jnp.ones((int(np.prod(shape[:-1])),), jnp.float32)
  paths = {
      "reduce": jax.jit(lambda x: jnp.sum(x, axis=(0, 1, 2))),
      "dot": jax.jit(lambda x: ones @ x.reshape(-1, shape[-1])),
  }
  np.testing.assert_allclose(paths["dot"](x), paths["reduce"](x), rtol=1e-4, atol=1e-2)
  compare(paths, x, args.reps, args.rounds, "reduce", "dot", f"shape {shape}")


if __name__ == "__main__":
  main()
