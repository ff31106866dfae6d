"""ResNet-20's (or --model's) step with bmd_jax.conv_grads' chunked weight gradients against the
same step with XLA's (conv_grads.MAX_KERNEL_SIZE = 0 while tracing), in one process.

    python bench/conv_grads_step.py                      # CE and full steps, batch 128
    python bench/conv_grads_step.py --variants=ce --rounds=6

The variants are bench/train_step.py's (`ce`: cross-entropy alone; `full`: the BD-BNN step
with its teacher). Each round times both builds of a variant (median of --steps calls after
2 warm-up calls); the losses of the two builds are printed first (equal up to rounding).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(variant: str, chunked: bool, batch_size: int, model: str = "resnet20"):
  """(a function that runs one step, the step's loss)."""
  import jax
  import train_step
  from bmd_jax import conv_grads, train
  image_size, _, classes = train_step.SIZES[model]
  config, _, teacher_model, state, teacher, batch, lr_fn = train_step.jax_setup(
      model, image_size, batch_size, classes)
  step = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                           steps_per_epoch=1000, total_epochs=config.num_epochs,
                           teacher_apply=teacher_model.apply)
  t = teacher if variant == "full" else None
  with contextlib.ExitStack() as stack:
    if not chunked:
      stack.enter_context(mock.patch.object(conv_grads, "MAX_KERNEL_SIZE", 0))
    if variant == "ce":
      stack.enter_context(train_step._without_kurtosis())  # pylint: disable=protected-access
    compiled = jax.jit(lambda s, b, t: step(s, b, t)).lower(state, batch, t).compile()
  _, metrics = compiled(state, batch, t)
  return (lambda: jax.block_until_ready(compiled(state, batch, t))), float(metrics["train/loss"])


def median_ms(run, steps: int) -> float:
  for _ in range(2):
    run()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="ce,full", help="ce and/or full")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=8, help="timed calls per build and round")
  parser.add_argument("--model", default="resnet20", help="resnet20 or resnet18 (224 pixels)")
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args()
  import bmd_jax
  bmd_jax.configure_cpu()  # before any JAX computation
  for variant in args.variants.split(","):
    runs = {}
    for chunked in (False, True):
      runs[chunked], loss = build(variant, chunked, args.batch, args.model)
      print(f"{variant} {'chunked' if chunked else 'xla'}: loss {loss:.6f}")
    rows = {False: [], True: []}
    for _ in range(args.rounds):
      for chunked, run in runs.items():
        rows[chunked].append(median_ms(run, args.steps))
    ratios = [a / b for a, b in zip(rows[False], rows[True])]
    print(f"{args.model} {variant}, batch {args.batch}: XLA's weight gradients "
          + ", ".join(f"{t:.0f}" for t in rows[False]) + " ms; chunked "
          + ", ".join(f"{t:.0f}" for t in rows[True]) + " ms; xla / chunked per round "
          + ", ".join(f"{r:.2f}" for r in ratios) + f"; median {statistics.median(ratios):.2f}x; "
          f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
