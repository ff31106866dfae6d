"""ResNet-20's (or --model's) train step with one of bmd_jax's CPU changes against the same step
without it, in one process. --change picks which:

    canonical conv_grads' CPU backward pass (canonical-layout convolutions, chunked weight
              gradients), against autodiff's gradients of lax.conv (no chunks) while tracing
    chunked   conv_grads' chunked weight gradients, against one convolution each
              (conv_grads.MAX_KERNEL_SIZE = 0 while tracing)
    barriers  the binary inputs' barriers kept (config.model.store_binary_input, the default, and
              cpu_barriers' compiler option), against none (store_binary_input=False)

    python bench/conv_grads_step.py                      # chunked; CE and full steps, batch 128
    python bench/conv_grads_step.py --variants=ce --rounds=6
    python bench/conv_grads_step.py --change=barriers --model=resnet18 --batch=32 --steps=3

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


def build(variant: str, change: str, on: bool, batch_size: int, model: str = "resnet20"):
  """(a function that runs one step, the step's loss), with `change` on or off."""
  import jax
  import train_step
  from bmd_jax.xla_cpu import conv_grads, cpu_barriers
  from bmd_jax.training import train
  image_size, _, classes = train_step.SIZES[model]
  barriers_off = change == "barriers" and not on
  with _config_without_barriers(train_step) if barriers_off else contextlib.nullcontext():
    config, _, teacher_model, state, teacher, batch, lr_fn = train_step.jax_setup(
        model, image_size, batch_size, classes)
  step = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                           steps_per_epoch=1000, total_epochs=config.num_epochs,
                           teacher_apply=teacher_model.apply)
  t = teacher if variant == "full" else None
  with contextlib.ExitStack() as stack:
    if change == "canonical" and not on:
      autodiff = conv_grads._autodiff_grads  # pylint: disable=protected-access
      stack.enter_context(mock.patch.object(conv_grads, "_cpu_grads", autodiff))
    if change == "chunked" and not on:
      stack.enter_context(mock.patch.object(conv_grads, "MAX_KERNEL_SIZE", 0))
    if variant == "ce":
      stack.enter_context(train_step._without_kurtosis())  # pylint: disable=protected-access
    lowered = jax.jit(lambda s, b, t: step(s, b, t)).lower(state, batch, t)
  compiled = lowered.compile(cpu_barriers.compile_options(lowered))  # as train.py does
  _, metrics = compiled(state, batch, t)
  return (lambda: jax.block_until_ready(compiled(state, batch, t))), float(metrics["train/loss"])


@contextlib.contextmanager
def _config_without_barriers(train_step):
  """train_step.jax_config with config.model.store_binary_input = False."""
  original = train_step.jax_config

  def without(*args, **kwargs):
    config = original(*args, **kwargs)
    config.model.store_binary_input = False
    return config

  with mock.patch.object(train_step, "jax_config", without):
    yield


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
  parser.add_argument("--change", default="chunked",
                      choices=("canonical", "chunked", "barriers"),
                      help="what is compared, on against off (see the docstring)")
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
    for on in (False, True):
      runs[on], loss = build(variant, args.change, on, args.batch, args.model)
      print(f"{variant} {args.change} {'on' if on else 'off'}: loss {loss:.6f}")
    rows = {False: [], True: []}
    for _ in range(args.rounds):
      for on, run in runs.items():
        rows[on].append(median_ms(run, args.steps))
    ratios = [a / b for a, b in zip(rows[False], rows[True])]
    print(f"{args.model} {variant}, batch {args.batch}, {args.change}: off "
          + ", ".join(f"{t:.0f}" for t in rows[False]) + " ms; on "
          + ", ".join(f"{t:.0f}" for t in rows[True]) + " ms; off / on per round "
          + ", ".join(f"{r:.2f}" for r in ratios) + f"; median {statistics.median(ratios):.2f}x; "
          f"load average {os.getloadavg()}")

if __name__ == "__main__":
  main()
