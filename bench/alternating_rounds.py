"""Two jitted ways of computing the same thing, timed in alternating rounds (the micro-benchmarks
reduction_vs_dot.py and max_pool_grad.py): the machines are shared and noisy, so each round
times every way once, and the result is the ratio per round and its median."""

from __future__ import annotations

import os
import statistics
import time


def median_ms(fn, x, reps: int) -> float:
  import jax
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def compare(ways: dict, x, reps: int, rounds: int, slow: str, fast: str, label: str) -> None:
  """Times every way of `ways` (name -> jitted function of x) over `rounds` alternating rounds
  and prints each round's median and the ratio slow / fast per round."""
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
