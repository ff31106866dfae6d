"""bench/popcount_loop.py's carry-save variant counts what packed._mismatches counts, checked
against NumPy's bit count (it is timed against it, so it must be exact)."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import popcount_loop  # noqa: E402


@pytest.mark.parametrize("words", [5, 8, 20])  # no group of 8, one, two and a rest
def test_carry_save_counts_mismatched_bits(words):
  rng = np.random.default_rng(words)
  a = rng.integers(0, 2**32, (7, words), dtype=np.uint32)
  b = rng.integers(0, 2**32, (3, words), dtype=np.uint32)
  a[0] = 0xFFFFFFFF  # all bits set against random rows: counts near the top of the range
  expected = np.unpackbits((a[:, None, :] ^ b[None]).view(np.uint8), axis=-1).reshape(
      7, 3, -1).sum(-1)
  got = popcount_loop.carry_save_mismatches(jnp.asarray(a), jnp.asarray(b.T.copy()))
  np.testing.assert_array_equal(np.asarray(got), expected)
