"""What the BD-BNN terms add to the CE step, measured in one process (issue 18's goal: <= 10%).

    python bench/terms_cost.py                          # ResNet-20, batch 128, 8 rounds
    python bench/terms_cost.py --model=resnet18 --rounds=4 --steps=3

bench/train_step.py times each variant's steps in a row, so a change in the machine's load
between the variants lands in their difference: its (full - teacher - ce) / ce came out 0-30%
from one run. Here bench/train_step.py's programs (`ce`: cross-entropy alone; `ce_kurt`: CE +
kurtosis; `full`: CE + kurtosis + WDM + distillation with the teacher's forward inside;
`teacher`: that forward alone) are compiled once and alternate within every round, each round
the median of --steps steps of each. Per round:

    terms    = (full - teacher - ce) / ce       kurtosis + WDM + distillation, teacher excluded
    kurtosis = (ce_kurt - ce) / ce

and the median over the rounds, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VARIANTS = ("ce", "ce_kurt", "full", "teacher")


def shares(ms: dict) -> dict:
  """Per-round costs relative to the CE step, from {variant: [ms per round]}."""
  rounds = range(len(ms["ce"]))
  return {"terms": [(ms["full"][r] - ms["teacher"][r] - ms["ce"][r]) / ms["ce"][r]
                    for r in rounds],
          "kurtosis": [(ms["ce_kurt"][r] - ms["ce"][r]) / ms["ce"][r] for r in rounds]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20", help="resnet20 (batch 128) or resnet18 (32)")
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  import bmd_jax
  bmd_jax.configure_cpu()  # before any JAX computation
  import alternating_rounds
  import train_step
  load_before = os.getloadavg()
  runners = train_step.jax_runners(args.model, VARIANTS)
  for run, _, _ in runners.values():
    for _ in range(args.warmup):
      run()
  ms = {variant: [] for variant in VARIANTS}
  for _ in range(args.rounds):
    for variant, (run, _, _) in runners.items():
      ms[variant].append(alternating_rounds.median_ms(lambda _, run=run: run(), None, args.steps))
  print(f"{args.model}, {args.rounds} rounds of {args.steps} steps; load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
  for variant, times in ms.items():
    print(f"{variant:8s} ms per round: " + ", ".join(f"{t:.0f}" for t in times)
          + f"; median {statistics.median(times):.0f}")
  for name, per_round in shares(ms).items():
    print(f"{name} / ce per round: " + ", ".join(f"{100 * s:.0f}%" for s in per_round)
          + f"; median {100 * statistics.median(per_round):.1f}%")


if __name__ == "__main__":
  main()
