"""Two jitted ways of computing the same thing, timed in alternating rounds (the micro-benchmarks
reduction_vs_dot.py and max_pool_grad.py): the machines are shared and noisy, so each round
times every way once, and the result is the ratio per round and its median."""

from __future__ import annotations

import argparse
import os
import statistics
import time


def arguments(doc: str, default_shape: str, default_reps: int):
  """(args, shape) from the command line (--shape N,H,W,C, --reps, --rounds), with bmd_jax's
  XLA:CPU flags set: call it before any JAX computation."""
  import bmd_jax
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--shape", default=default_shape, help="N,H,W,C of the input")
  parser.add_argument("--reps", type=int, default=default_reps)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  bmd_jax.configure_cpu()
  return args, tuple(int(s) for s in args.shape.split(","))


def median_ms(fn, x, reps: int) -> float:
  import jax
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def compare(ways: dict, x, reps: int, rounds: int, slow: str, fast: str, label: str) -> dict:
  """Times every way of `ways` (name -> jitted function of x) over `rounds` alternating rounds,
  prints each round's median and the ratio slow / fast per round, and returns
  {way: [ms per round]}."""
  rows = {name: [] for name in ways}
  for _ in range(rounds):
    for name, fn in ways.items():
      rows[name].append(median_ms(fn, x, reps))
  print(f"{label}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"load average {os.getloadavg()}")
  for name, times in rows.items():
    print(f"{name}: " + ", ".join(f"{t:.1f}" for t in times) + " ms per round")
  ratios = [s / f for s, f in zip(rows[slow], rows[fast])]
  print(f"{slow} / {fast} per round: " + ", ".join(f"{r:.1f}x" for r in ratios)
        + f"; median {statistics.median(ratios):.1f}x")
  return rows
