"""A 3x3 convolution's weight gradient: XLA's against xla_cpu.conv_grads' (canonical-layout
convolutions summed over batch chunks on CPU).

    python bench/conv_weight_grad.py                    # ResNet-20's stage 1, batch 128
    python bench/conv_weight_grad.py --shape=128,16,16,32
    python bench/conv_weight_grad.py --shape=128,8,8,64

Input N,H,W,C and a CxC kernel, SAME padding; both jitted as the gradient of sum(conv * g)
with respect to the kernel; each is the median of --reps calls, alternating over --rounds
rounds; the gradients are checked equal (to float rounding) first.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alternating_rounds import arguments, compare  # noqa: E402


def main():
  args, shape = arguments(__doc__, "128,32,32,16", 20)  # before any JAX computation
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bmd_jax.xla_cpu import conv_grads

  x = jnp.sign(jax.random.normal(jax.random.PRNGKey(0), shape))  # a binary layer's input
  channels = shape[-1]
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, channels, channels))
  g = jax.random.normal(jax.random.PRNGKey(2), shape)
  convs = {"xla": jax.lax.conv_general_dilated, "chunked": conv_grads.conv_general_dilated}

  def weight_grad(conv):
    loss = lambda w, x, g: jnp.sum(conv(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) * g)
    return jax.jit(lambda operands: jax.grad(loss)(*operands))  # x and g not constants

  grads = {name: weight_grad(conv) for name, conv in convs.items()}
  operands = (w, x, g)
  np.testing.assert_allclose(grads["chunked"](operands), grads["xla"](operands), rtol=1e-4,
                             atol=1e-2)
  compare(grads, operands, args.reps, args.rounds, "xla", "chunked",
          f"input {shape}, kernel 3x3x{channels}x{channels}, {conv_grads.CHUNKS} chunks")


if __name__ == "__main__":
  main()
