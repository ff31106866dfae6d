"""Many train steps a dispatch (dispatch.py), the loop's events (loop_schedule.py), the
whole-split evaluation and the stop time."""

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.training import dispatch, evaluation, input_pipeline, loop_schedule, sharding, train
from step_setup import short_digits_config


def _toy_step(state, batch, teacher, distill_teacher):
  """state + 1; its 'loss' is the batch (NaN where the batch is)."""
  return state + 1, {"train/loss": batch, "train/accuracy": 2.0 * batch}


def test_sums_and_the_first_nonfinite_step_stop_the_loop():
  losses = np.array([1.0, 2.0, np.nan, 4.0, np.inf], np.float32)
  run = jax.jit(dispatch.device_steps(_toy_step, lambda split, step: split[step]))
  acc = dispatch.empty_accumulator({"train/loss": None, "train/accuracy": None})
  state, acc = run(jnp.zeros(()), acc, jnp.asarray(losses), None, None, 0, 2)
  host = dispatch.read(acc)
  assert host["steps"] == 2 and host["nonfinite_step"] == -1
  assert host["means"] == pytest.approx({"train/loss": 1.5, "train/accuracy": 3.0})
  state, acc = run(state, acc, jnp.asarray(losses), None, None, 2, 3)
  host = dispatch.read(acc)
  assert int(state) == 3  # stopped after step 3 (index 2), never trained past it
  assert host["nonfinite_step"] == 3 and host["steps"] == 3
  assert math.isnan(host["at_nonfinite"]["train/loss"])
  assert dispatch.nonfinite_step(acc) == 3


def test_host_steps_keep_the_first_nonfinite_step():
  run = jax.jit(dispatch.host_step(_toy_step))
  acc = dispatch.empty_accumulator({"train/loss": None, "train/accuracy": None})
  state = jnp.zeros(())
  for step, loss in enumerate([1.0, np.inf, np.nan]):
    state, acc = run(state, acc, jnp.float32(loss), None, None, step)
  assert dispatch.read(acc)["nonfinite_step"] == 2


def _device_setup():
  config = short_digits_config(30, 10, input_path="device")
  datasets = input_pipeline.create_datasets(config)
  mesh = sharding.create_mesh(num_devices=1)
  train_input = input_pipeline.create_train_input(config, datasets, mesh, config.seed)
  model = train.create_model(config, datasets.info.num_classes)
  lr_fn = train.create_learning_rate_fn(config, 20)
  state = train.create_train_state(jax.random.PRNGKey(0), config, model,
                                   datasets.info.image_shape, lr_fn)
  step_fn = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                              steps_per_epoch=20, total_epochs=5.0)
  shapes = jax.eval_shape(step_fn, state, jax.eval_shape(train_input.batch_fn,
                                                         train_input.split, 0), None, None)[1]
  return config, datasets, mesh, train_input, state, step_fn, shapes


def _steps(program, state, acc, split, starts_and_counts):
  for first, count in starts_and_counts:
    state, acc = program(state, acc, split, None, None, np.int32(first), np.int32(count))
  return state, dispatch.read(acc)


def test_many_steps_a_dispatch_equal_one_step_a_dispatch():
  _, _, _, train_input, state, step_fn, shapes = _device_setup()
  copy = lambda: jax.tree_util.tree_map(jnp.array, state)
  looped = jax.jit(dispatch.device_steps(step_fn, train_input.batch_fn))
  flat = jax.jit(dispatch.device_steps(step_fn, train_input.batch_fn, loop=False))
  empty = lambda: dispatch.empty_accumulator(shapes)
  split = train_input.split
  one_dispatch, sums = _steps(looped, copy(), empty(), split, [(0, 3)])
  split_up, split_sums = _steps(looped, copy(), empty(), split, [(0, 1), (1, 2)])
  by_step, step_sums = _steps(flat, copy(), empty(), split, [(0, 1), (1, 1), (2, 1)])
  # The same program cut at other steps: the same values, bit for bit.
  jax.tree_util.tree_map(np.testing.assert_array_equal, one_dispatch.params, split_up.params)
  assert sums == split_sums
  # The loop-free program compiles differently: equal to float rounding over 3 steps.
  assert sums["steps"] == step_sums["steps"] == 3
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, atol=1e-5),
                         one_dispatch.params, by_step.params)
  for key, value in sums["means"].items():
    assert value == pytest.approx(step_sums["means"][key], rel=1e-4, abs=1e-6), key


def test_the_loop_equals_the_separate_batch_and_step_programs():
  """The old loop: the batch in its own program, then train_step on it."""
  _, _, _, train_input, state, step_fn, shapes = _device_setup()
  looped = jax.jit(dispatch.device_steps(step_fn, train_input.batch_fn))
  reference, metrics = jax.tree_util.tree_map(jnp.array, state), []
  for step in range(2):
    reference, m = jax.jit(step_fn)(reference, train_input.batch(step), None, None)
    metrics.append(m)
  new, host = _steps(looped, state, dispatch.empty_accumulator(shapes), train_input.split,
                     [(0, 2)])
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, atol=1e-5),
                         new.params, reference.params)
  for key in host["means"]:
    expected = np.mean([float(m[key]) for m in metrics])
    assert host["means"][key] == pytest.approx(expected, rel=1e-4, abs=1e-6), key


def test_the_whole_split_in_one_dispatch_equals_batch_by_batch():
  config, datasets, mesh, _, state, _, _ = _device_setup()
  config.eval_batch_size = 64  # 360 examples: 6 batches, the last one masked
  whole = evaluation.create_evaluator(config, datasets, mesh)(state)
  grain_config = short_digits_config(30, 10, eval_batch_size=64)
  by_batch = evaluation.create_evaluator(grain_config, datasets, mesh)(state)
  assert whole == pytest.approx(by_batch, rel=1e-5)
  config.steps_per_eval = 2  # the first 128 examples only
  first_two = evaluation.create_evaluator(config, datasets, mesh)(state)
  assert first_two["eval/accuracy"] != pytest.approx(whole["eval/accuracy"])


def _brute_force(schedule, step):
  """The first step after `step` at which the host must act, by walking step by step."""
  s = step + 1
  limit = schedule.max_steps_per_dispatch
  while not (s == schedule.total_steps or s % schedule.log_every == 0
             or s % schedule.eval_every == 0
             or (schedule.save_every_steps > 0 and s % schedule.save_every_steps == 0)
             or (schedule.save_every_epochs > 0
                 and s % round(schedule.save_every_epochs * schedule.steps_per_epoch) == 0)
             or (limit > 0 and s - step >= limit)):
    s += 1
  return s


@pytest.mark.parametrize("fields", [
    dict(log_every=7, eval_every=39, save_every_steps=0, save_every_epochs=2.0,
         max_steps_per_dispatch=0),
    dict(log_every=100, eval_every=390, save_every_steps=250, save_every_epochs=0.0,
         max_steps_per_dispatch=16),
    dict(log_every=5, eval_every=13, save_every_steps=0, save_every_epochs=0.0,
         max_steps_per_dispatch=1),
])
def test_dispatches_end_at_every_event_and_nowhere_else(fields):
  schedule = loop_schedule.Schedule(total_steps=1000, steps_per_epoch=13,
                                    save_every_minutes=0.0, **fields)
  for step in range(0, 1000):
    assert schedule.dispatch_end(step) == _brute_force(schedule, step), step


def test_saves_by_steps_epochs_minutes_and_at_the_end():
  schedule = loop_schedule.Schedule(
      total_steps=100, steps_per_epoch=10, log_every=5, eval_every=50, save_every_steps=0,
      save_every_epochs=3.0, save_every_minutes=2.0, max_steps_per_dispatch=0)
  saved = [s for s in range(1, 101) if schedule.save_due(s, minutes_since_save=0.0)]
  assert saved == [30, 60, 90, 100]  # never at a plain epoch end
  assert schedule.save_due(41, minutes_since_save=2.5)
  assert not schedule.save_due(41, minutes_since_save=1.5)


@pytest.mark.slow
def test_a_run_stops_and_saves_before_its_stop_time(tmp_path):
  config = short_digits_config(2000, 5, input_path="device", checkpoint_every_steps=1000,
                               checkpoint_every_epochs=0.0, steps_per_dispatch=5,
                               stop_at_time=time.time() + 15.0)
  with pytest.raises(train.Preempted, match="the stop time is near") as stopped:
    train.train_and_evaluate(config, str(tmp_path))
  step = int(str(stopped.value).split("saved at step ")[1].split()[0])
  assert 0 < step < 2000
  from bmd_jax.infra import checkpoint
  assert checkpoint.finished_steps(tmp_path / "checkpoints" / "train")[-1] == step


def test_the_cifar10_recipe_saves_by_policy_not_at_each_epoch_end():
  from bmd_jax.configs import cifar10
  config = cifar10.get_config()
  steps_per_epoch = 50_000 // config.batch_size
  schedule = loop_schedule.Schedule.from_config(config, steps_per_epoch, 400 * steps_per_epoch,
                                                0)
  saved = [s for s in range(1, 400 * steps_per_epoch + 1)
           if schedule.save_due(s, minutes_since_save=0.0)]
  assert saved[:2] == [10 * steps_per_epoch, 20 * steps_per_epoch] and len(saved) == 40
  assert schedule.save_due(123, minutes_since_save=10.5)


@pytest.mark.parametrize("field, value", [("checkpoint_every_steps", -1),
                                          ("checkpoint_every_epochs", -0.5),
                                          ("steps_per_dispatch", -3),
                                          ("eval_precision", "fp64")])
def test_bad_loop_fields_are_named(field, value):
  from bmd_jax.infra import config_checks
  config = short_digits_config(30, 10)
  config[field] = value
  with pytest.raises(config_checks.ConfigValueError, match=f"config.{field}="):
    config_checks.check(config)
