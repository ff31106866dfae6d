"""The XOR-popcount loop of the packed layers alone: how many word pairs a second it runs, how
the kernel's layout changes that, and a carry-save (Harley-Seal) variant tried against it.

    python bench/popcount_loop.py                          # ResNet-18's 28x28x128 layer, batch 32
    python bench/popcount_loop.py --positions=401408 --words=18 --outputs=64

`packed._mismatches(a, columns)` sums popcount(a XOR b) over K words for P patches against O
kernel rows: P x O x K word pairs, no packing or patch gathering (bench/packed_inference.py
times those too). Three ways, all exact (checked equal before timing):

    columns        the kernel as (K, O) columns, an argument (packed.kernel_columns): what
                   packed inference runs
    transposed     the kernel as pack_kernel's (O, K) words, transposed inside the program
                   (what packed inference did until 2026-11-28)
    carry_save     columns, the XORed words added bit-wise in groups of 8 (full adders on whole
                   words: ones, twos, fours, eights), one popcount per group plus four at the
                   end: fewer popcounts for more bitwise operations

They alternate over --rounds rounds, each the median of --reps calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def carry_save_mismatches(a, columns):
  """popcount(a XOR b) summed over words, like packed._mismatches(a, columns = b.T), through
  full adders."""
  import jax
  import jax.numpy as jnp

  def full_add(x, y, z):  # (carry, sum) bit-wise
    u = x ^ y
    return (x & y) | (u & z), u ^ z

  def count(x):
    return jax.lax.population_count(x).astype(jnp.int32)

  words = [jnp.bitwise_xor(a[..., k, None], columns[k]) for k in range(a.shape[-1])]
  total = None
  groups = len(words) // 8
  if groups:
    zero = jnp.zeros_like(words[0])
    ones, twos, fours, eights = zero, zero, zero, None
    for g in range(groups):
      w = words[8 * g:8 * g + 8]
      carry_a, ones = full_add(ones, w[0], w[1])
      carry_b, ones = full_add(ones, w[2], w[3])
      fours_a, twos = full_add(twos, carry_a, carry_b)
      carry_a, ones = full_add(ones, w[4], w[5])
      carry_b, ones = full_add(ones, w[6], w[7])
      fours_b, twos = full_add(twos, carry_a, carry_b)
      eight, fours = full_add(fours, fours_a, fours_b)
      eights = count(eight) if eights is None else eights + count(eight)
    total = 8 * eights + 4 * count(fours) + 2 * count(twos) + count(ones)
  for word in words[8 * groups:]:
    total = count(word) if total is None else total + count(word)
  return total


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--positions", type=int, default=32 * 28 * 28, help="P: patches")
  parser.add_argument("--words", type=int, default=36, help="K: words per patch")
  parser.add_argument("--outputs", type=int, default=128, help="O: output channels")
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  import bmd_jax
  bmd_jax.configure_cpu()  # before any JAX computation
  import alternating_rounds
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bmd_jax.tools import packed

  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.integers(0, 2**32, (args.positions, args.words), dtype=np.uint32))
  b = jnp.asarray(rng.integers(0, 2**32, (args.outputs, args.words), dtype=np.uint32))
  # The kernel is an argument, as in a packed layer: as a constant, XLA would fold the transpose.
  columns = jnp.asarray(packed.kernel_columns(b))
  mismatches = jax.jit(packed._mismatches)  # pylint: disable=protected-access
  transposed = jax.jit(lambda a, b: packed._mismatches(a, b.T))  # pylint: disable=protected-access
  carry_save = jax.jit(carry_save_mismatches)
  ways = {"columns": lambda a: mismatches(a, columns),
          "transposed": lambda a: transposed(a, b),
          "carry_save": lambda a: carry_save(a, columns)}
  for name in ("transposed", "carry_save"):
    np.testing.assert_array_equal(ways["columns"](a), ways[name](a))
  label = f"P={args.positions} K={args.words} O={args.outputs}"
  rows = alternating_rounds.compare(ways, a, args.reps, args.rounds, "transposed", "columns",
                                    label)
  ratios = [c / p for c, p in zip(rows["carry_save"], rows["columns"])]
  print("carry_save / columns per round: " + ", ".join(f"{r:.2f}x" for r in ratios)
        + f"; median {statistics.median(ratios):.2f}x")
  pairs = args.positions * args.words * args.outputs
  for name in ("columns", "transposed"):
    ms = statistics.median(rows[name])
    print(f"{name}: {pairs / 1e6:.1f} M word pairs in {ms:.1f} ms, "
          f"{pairs / ms / 1e6:.2f} G word pairs/s")


if __name__ == "__main__":
  main()
