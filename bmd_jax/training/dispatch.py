"""Train steps handed to the devices many at a time, their metrics summed where they run.

The first GPU window (docs/results/h200-2026-11-27) ran the loop at half the step's rate: each
step was two dispatches (its batch, then the step) and left 31 scalars to fetch one by one.
Here a dispatch runs `count` steps and carries an accumulator through them:

    {"sums": {metric: f32 scalar}, "steps": int32, "nonfinite_step": int32,
     "at_nonfinite": {metric: that step's value}}

so the host reads one small tree per log interval. On the device input path (data/on_device.py)
the batch is built inside the same program from (seed, step), and the steps run in a
`lax.while_loop` whose trip count is an argument: one program for any number of steps. The
loop stops at the first step whose loss is not finite (`nonfinite_step` is then that step, 1
based as the console counts; -1 while none), so the state is never trained past it and the
error names the step and its loss terms. On the grain path each dispatch is one step on a
host batch, with the same accumulator.

Both programs go through cpu_barriers.jit. A step inside a while loop has its barriers nested,
which XLA:CPU 0.10 may abort on, so on CPU a many-step program compiles without them (same
values); `loop=False` builds the one-step program whose barriers stay at top level.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Accumulator = dict


def empty_accumulator(metric_shapes: dict) -> Accumulator:
  """Sums of zero over no step, for metrics shaped as `metric_shapes` (jax.eval_shape's)."""
  zeros = lambda: {k: jnp.zeros((), jnp.float32) for k in metric_shapes}  # donated: no sharing
  return {"sums": zeros(), "steps": jnp.zeros((), jnp.int32),
          "nonfinite_step": jnp.full((), -1, jnp.int32), "at_nonfinite": zeros()}


def accumulate(acc: Accumulator, metrics: dict, step) -> Accumulator:
  """`acc` with one more step's metrics (`step`: that step's 0-based index)."""
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  newly_bad = (acc["nonfinite_step"] < 0) & ~jnp.isfinite(metrics["train/loss"])
  return {
      "sums": {k: acc["sums"][k] + metrics[k] for k in acc["sums"]},
      "steps": acc["steps"] + 1,
      "nonfinite_step": jnp.where(newly_bad, jnp.asarray(step, jnp.int32) + 1,
                                  acc["nonfinite_step"]),
      "at_nonfinite": {k: jnp.where(newly_bad, metrics[k], acc["at_nonfinite"][k])
                       for k in acc["at_nonfinite"]},
  }


def device_steps(step_fn: Callable, batch_fn: Callable, loop: bool = True) -> Callable:
  """fn(state, acc, split, teacher, distill_teacher, first, count) -> (state, acc): steps
  first .. first+count-1 (stopping early at a non-finite loss), each on the batch
  `batch_fn(split, step)`. loop=False: one step (count must be 1), no loop in the program."""

  def one_step(state, acc, split, teacher, distill_teacher, step):
    state, metrics = step_fn(state, batch_fn(split, step), teacher, distill_teacher)
    return state, accumulate(acc, metrics, step)

  return looped(one_step, loop)


def looped(one_step: Callable, loop: bool = True) -> Callable:
  """fn(state, acc, *inputs, first, count) -> (state, acc): `one_step(state, acc, *inputs,
  step)` for steps first .. first+count-1 in a lax.while_loop whose trip count is an argument,
  stopping after the first step with a non-finite loss (in any run, where `acc` holds one
  accumulator per run: run_group_step.py). loop=False: one call (count must be 1)."""

  def run(state, acc, *args):
    *inputs, first, count = args
    if not loop:
      return one_step(state, acc, *inputs, first)

    def cond(carry):
      i, _, acc = carry
      return (i < count) & jnp.all(acc["nonfinite_step"] < 0)

    def body(carry):
      i, state, acc = carry
      state, acc = one_step(state, acc, *inputs, first + i)
      return i + 1, state, acc

    _, state, acc = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, acc))
    return state, acc

  return run


def host_step(step_fn: Callable) -> Callable:
  """fn(state, acc, batch, teacher, distill_teacher, step) -> (state, acc): one step on a
  batch made on the host (the grain path). Steps after a non-finite one still run (as they
  always did there); the accumulator keeps the first, and the loop saves nothing after it."""

  def run(state, acc, batch, teacher, distill_teacher, step):
    state, metrics = step_fn(state, batch, teacher, distill_teacher)
    return state, accumulate(acc, metrics, step)

  return run


def read(acc: Accumulator) -> dict[str, Any]:
  """The accumulator on the host, in one transfer: {'means', 'steps', 'nonfinite_step',
  'at_nonfinite'} (means over the steps summed; empty when none was)."""
  host = jax.device_get(acc)
  steps = int(host["steps"])
  means = {k: float(v) / steps for k, v in host["sums"].items()} if steps else {}
  return {"means": means, "steps": steps, "nonfinite_step": int(host["nonfinite_step"]),
          "at_nonfinite": {k: float(v) for k, v in host["at_nonfinite"].items()}}


def nonfinite_step(acc: Accumulator) -> int:
  """The first step with a non-finite loss (1-based), or -1: one scalar read."""
  return int(np.asarray(jax.device_get(acc["nonfinite_step"])))
