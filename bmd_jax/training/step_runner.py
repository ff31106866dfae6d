"""Running train steps from the host: StepRunner (one dispatch of many steps on the device
input path, or one step a dispatch on the grain path) and the loop's Clock (images/s, time
since the last save, whether the stop time is near)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bmd_jax.data import on_device
from bmd_jax.training import dispatch, sharding
from bmd_jax.xla_cpu import cpu_barriers


def dispatch_limit(config, platform: str) -> int:
  """The most steps one device dispatch runs (0: up to the next event), from
  config.steps_per_dispatch: its default 0 is one step on CPU."""
  limit = config.get("steps_per_dispatch", 0)  # config_checks: 0 or more
  if limit == 0 and platform == "cpu":
    limit = 1  # XLA:CPU ran the step 2-15x slower inside a while loop (docs/BENCHMARKS.md)
  return limit


class StepRunner:
  """Runs train steps [step, end) from the host. On the device input path that is one
  dispatch (a while loop over the steps, the batches made inside: dispatch.device_steps); on
  the grain path one dispatch per step on the iterator's batches. Metric sums ride along.

  config.steps_per_dispatch caps a device dispatch: 0 (the default) runs up to the next log,
  evaluation or step-based save on a GPU or TPU, and one step on CPU, where XLA ran the step
  inside a loop several times slower; 1 is a program without a loop (its optimization
  barriers kept on CPU). A dispatch ends where the host must act, so SIGTERM is answered
  after at most one log interval of steps.
  """

  def __init__(self, config, step_fn, train_input, mesh, state_shardings, state, teacher,
               distill_teacher, image_shape):
    self._teacher, self._distill = teacher, distill_teacher
    self._replicated = sharding.replicated_sharding(mesh)
    self._input = train_input
    self.on_device = isinstance(train_input, on_device.DeviceTrainInput)
    platform = mesh.devices.flat[0].platform
    limit = dispatch_limit(config, platform)
    self.max_steps_per_dispatch = limit if self.on_device else 1
    common = dict(out_shardings=(state_shardings, self._replicated), donate_argnums=(0, 1),
                  platform=platform)
    replicated = self._replicated
    if self.on_device:
      batch = jax.eval_shape(train_input.batch_fn, train_input.split, 0)
      self._program = cpu_barriers.jit(
          dispatch.device_steps(step_fn, train_input.batch_fn, loop=limit != 1),
          in_shardings=(state_shardings, replicated, on_device.split_sharding(mesh),
                        replicated, replicated, replicated, replicated), **common)
    else:
      batch = {"image": jax.ShapeDtypeStruct((config.batch_size, *image_shape),
                                             jnp.float32),
               "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
      self._program = cpu_barriers.jit(
          dispatch.host_step(step_fn),
          in_shardings=(state_shardings, replicated, sharding.batch_sharding(mesh),
                        replicated, replicated, replicated), **common)
    self._metric_shapes = jax.eval_shape(step_fn, state, batch, teacher, distill_teacher)[1]

  def empty(self) -> dispatch.Accumulator:
    return jax.device_put(dispatch.empty_accumulator(self._metric_shapes), self._replicated)

  def __call__(self, state, acc, step: int, end: int):
    if self.on_device:
      return self._program(state, acc, self._input.split, self._teacher, self._distill,
                           np.int32(step), np.int32(end - step))
    for s in range(step, end):
      self._last_batch = self._input.batch(s)
      state, acc = self._program(state, acc, self._last_batch, self._teacher, self._distill,
                                 np.int32(s))
    return state, acc

  def last_batch(self, done: int) -> dict:
    """The batch of the last step run (step done - 1)."""
    return self._input.batch(done - 1) if self.on_device else self._last_batch

  def describe(self) -> str:
    if not self.on_device:
      return "one step a dispatch (grain input)"
    limit = self.max_steps_per_dispatch
    return (f"up to {limit} steps a dispatch" if limit else
            "steps dispatched up to each log, evaluation or checkpoint")

  def compilations(self) -> int:
    return self._program._cache_size()  # pylint: disable=protected-access


class Clock:
  """The loop's wall time: images/s between log lines, minutes since the last save, and
  whether the next dispatch would run past config.stop_at_time (seconds since the epoch; 0:
  none), at the pace measured so far."""

  def __init__(self, first_step: int, stop_at_time: float):
    self.stop_at = float(stop_at_time or 0.0)
    self._first_step = first_step
    self._rate_mark = self._pace_mark = None
    self._start = self._last_save = time.time()

  def rate(self, done: int, batch_size: int) -> float:
    """Images per second since the last call (the first: since the loop started, compilation
    included)."""
    now = time.time()
    since, steps = self._rate_mark or (self._start, self._first_step)
    self._rate_mark = (now, done)
    return (done - steps) * batch_size / max(now - since, 1e-9)

  def saved(self) -> None:
    self._last_save = time.time()

  def minutes_since_save(self) -> float:
    return (time.time() - self._last_save) / 60.0

  def stop_before(self, done: int, next_steps: int, acc) -> bool:
    """Whether to stop after step `done`: the next `next_steps` steps would end past the stop
    time. Waits for the devices first, so the pace is theirs, not the host's running ahead."""
    if not self.stop_at:
      return False
    jax.block_until_ready(acc)
    now = time.time()
    if self._pace_mark is None:  # the first dispatch held the compilation: no pace from it
      self._pace_mark = (now, done)
      return now >= self.stop_at
    since, steps = self._pace_mark
    pace = (now - since) / max(done - steps, 1)
    return now + pace * next_steps >= self.stop_at
