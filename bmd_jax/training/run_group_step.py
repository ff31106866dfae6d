"""The program of a run group: K runs' train steps as one step over a leading run axis.

A single run's step reads its hyperparameters from the config as constants (a zero-weight
term is dropped at trace time). In a group they are traced instead: `traced_values` gives,
for each traced field, its value in every run (an array with a leading run axis), and inside
the program `traced_config` writes one run's values into a copy of the config, so the very
same train step (train.train_step), learning-rate schedule and optimizer read them. `jax.vmap`
over the run axis then trains the runs side by side: their states, teachers, values and
seeds (data order and augmentation) are stacked, the program is one. A loss term whose weight
is 0 in every run of the group stays a constant 0 and is dropped as in a single run.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bmd_jax.core import objective
from bmd_jax.data import on_device
from bmd_jax.training import diagnostics, dispatch, train
from bmd_jax.xla_cpu import cpu_barriers

# Traced in every group, whether or not the runs differ in them (the loss weights only where
# some run's is nonzero); the seed reaches the batches, the rest the step.
_ALWAYS_TRACED = ("seed", "learning_rate", "estimators.ede_t_min", "estimators.ede_t_max")
KURTOSIS_TARGET = "loss.kurtosis.target"


def _get(config, field: str):
  for key in field.split("."):
    config = config[key]
  return config


def traced_values(configs: Sequence[ml_collections.ConfigDict],
                  kurtosis_layers: Sequence[str]) -> dict[str, np.ndarray]:
  """{dotted field: its value in each run} for one stage of the runs (`configs`, in order):
  the seed (int32), the learning rate's peak, EDE's t range, the loss weights of the terms
  some run weighs, and the kurtosis target, one per layer where some run gives per-layer
  targets (float32)."""
  fields = list(_ALWAYS_TRACED)
  fields += [f"loss.{term}.weight" for term in configs[0].loss
             if any(run.loss[term].get("weight", 0.0) for run in configs)]
  values = {f: np.asarray([_get(run, f) for run in configs],
                          np.int32 if f == "seed" else np.float32) for f in fields}
  targets = [objective.kurtosis_targets(run.loss.kurtosis, kurtosis_layers) for run in configs]
  if any(isinstance(t, (tuple, list)) for t in targets):
    targets = [np.broadcast_to(np.asarray(t, np.float32), (len(kurtosis_layers),))
               for t in targets]
  values[KURTOSIS_TARGET] = np.asarray(targets, np.float32)
  return values


def traced_config(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """A copy of `config` holding one run's (traced) `values`; its kurtosis target is the one
  per layer or the scalar of `values`, so its per-layer list is emptied."""
  copy = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  copy.update_from_flattened_dict({**values, "loss.kurtosis.targets": ()})
  return copy


def group_step(config: ml_collections.ConfigDict, **step_options) -> Callable:
  """fn(states, batches, teachers, distill_teachers, values) -> (states, metrics), every
  argument and result with a leading run axis: train.train_step of each run under its
  values (traced_config), with the learning-rate schedule and optimizer rebuilt from them.
  `step_options`: train_step's keyword arguments but config and learning_rate_fn."""
  steps_per_epoch = step_options["steps_per_epoch"]

  def one_run(state, batch, teacher, distill_teacher, values):
    run_config = traced_config(config, values)
    learning_rate_fn = train.create_learning_rate_fn(run_config, steps_per_epoch)
    # The optimizer is a static field of the state: this run's (its traced peak) for the
    # update, the state's own back in the result, so the loop's carry keeps its structure.
    tx = train.create_optimizer(run_config, learning_rate_fn)
    new_state, metrics = train.train_step(
        state.replace(tx=tx), batch, teacher, distill_teacher, config=run_config,
        learning_rate_fn=learning_rate_fn, **step_options)
    return new_state.replace(tx=state.tx), metrics

  return jax.vmap(one_run)


def group_term_gradient_norms(config: ml_collections.ConfigDict, **step_options) -> Callable:
  """train.term_gradient_norms of each run under its values, as group_step takes them."""

  def one_run(state, batch, teacher, distill_teacher, values):
    return train.term_gradient_norms(state, batch, teacher, distill_teacher,
                                     config=traced_config(config, values), **step_options)

  return jax.vmap(one_run)


def group_layer_diagnostics(config: ml_collections.ConfigDict) -> Callable:
  """diagnostics.layer_diagnostics of each run under its values (its EDE range): fn(states,
  batches, previous signs, progress, values), all but progress with a leading run axis."""

  def one_run(state, batch, previous_signs, progress, values):
    return diagnostics.layer_diagnostics(state, batch, previous_signs, progress,
                                         config=traced_config(config, values))

  return jax.vmap(one_run, in_axes=(0, 0, 0, None, 0))


def group_batches(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """fn(split, step, seeds) -> each run's global batch of `step` from its own seed (data
  order and augmentation), stacked; the data axis splits each run's batch."""
  batch_fn = functools.partial(on_device.train_batch, batch_size=config.batch_size,
                               augment=config.get("augment", "none"), mean=tuple(config.mean),
                               std=tuple(config.std))
  spread = NamedSharding(mesh, PartitionSpec(None, on_device.DATA_AXIS))

  def batches(split, step, seeds):
    stacked = jax.vmap(lambda seed: batch_fn(split, step, seed=seed))(seeds)
    return jax.lax.with_sharding_constraint(stacked, spread)

  return batches


def group_device_steps(step_fn: Callable, batches_fn: Callable, loop: bool = True) -> Callable:
  """dispatch.device_steps for a group: fn(states, accs, split, teachers, distill_teachers,
  values, first, count) -> (states, accs), one accumulator per run (leading run axis); the
  loop stops at the first step where any run's loss is not finite."""

  def one_step(state, acc, split, teacher, distill_teacher, values, step):
    batch = batches_fn(split, step, values["seed"])
    state, metrics = step_fn(state, batch, teacher, distill_teacher, values)
    return state, jax.vmap(dispatch.accumulate, in_axes=(0, 0, None))(acc, metrics, step)

  return dispatch.looped(one_step, loop)


def compiled_group_steps(config: ml_collections.ConfigDict, mesh: Mesh, loop: bool,
                         **step_options) -> tuple[Callable, Callable, Callable]:
  """(program, step_fn, batches_fn): group_device_steps of group_step on group_batches,
  compiled as the loop compiles a run's steps (cpu_barriers.jit; states and accumulators
  replicated and donated). `step_options` as group_step's."""
  step_fn = group_step(config, **step_options)
  batches_fn = group_batches(config, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  program = cpu_barriers.jit(group_device_steps(step_fn, batches_fn, loop=loop),
                             mesh.devices.flat[0].platform,
                             out_shardings=(replicated, replicated), donate_argnums=(0, 1))
  return program, step_fn, batches_fn


def empty_accumulators(metric_shapes: dict, runs: int) -> dispatch.Accumulator:
  """One empty accumulator per run, stacked (`metric_shapes`: one run's metrics)."""
  return jax.vmap(lambda _: dispatch.empty_accumulator(metric_shapes))(jnp.arange(runs))


def stack(trees: Sequence) -> object:
  """Trees of the same structure stacked on a new leading run axis."""
  return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def stack_states(states: Sequence[train.TrainState]) -> train.TrainState:
  """Train states stacked on a new leading run axis, under the first one's optimizer (each
  run's own is rebuilt inside the step, group_step: the static fields must be one)."""
  first = states[0]
  return stack([state.replace(tx=first.tx, apply_fn=first.apply_fn) for state in states])


def unstack(tree, index: int):
  """Run `index`'s slice of a stacked tree."""
  return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)
