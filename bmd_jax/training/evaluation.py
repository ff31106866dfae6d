"""Evaluation: the eval step (sums over the valid rows of a padded batch) and the evaluator,
which runs the whole eval split at a fixed matmul precision (on the device input path, in
one program)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from bmd_jax.data import on_device
from bmd_jax.training import input_pipeline, sharding
from bmd_jax.training.estimator_schedule import estimator_args


def eval_step(state, batch: dict, *, config, progress: float = 1.0):
  """Sums of loss, correct predictions and examples over the valid rows of a padded batch."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"], train=False,
                          estimator_args=estimator_args(config, progress))
  mask = batch["mask"].astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return {"loss": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def _eval_metrics(totals: dict) -> dict[str, float]:
  count = max(float(totals["count"]), 1.0)
  return {"eval/loss": float(totals["loss"]) / count,
          "eval/accuracy": float(totals["correct"]) / count}


def create_evaluator(config, datasets, mesh):
  """fn(state) -> {'eval/loss', 'eval/accuracy'} over the eval split (or its first
  config.steps_per_eval batches), computed at config.eval_precision (default 'highest':
  float32 matmuls and convolutions, so a GPU's TF32 does not move top-1; on 2026-11-27 it moved
  it by 0.4 points). On the device input path the whole split is one dispatch."""
  precision = config.get("eval_precision", "highest")
  step = functools.partial(eval_step, config=config)
  replicated = sharding.replicated_sharding(mesh)
  limit = config.steps_per_eval if config.steps_per_eval > 0 else None
  if config.get("input_path", "grain") == "device":
    batch_size = config.get("eval_batch_size", config.batch_size)
    split = on_device.upload_source(datasets.eval, mesh, batch_size)
    num_batches = min(-(-split.num_examples // batch_size), limit or math.inf)
    program = jax.jit(
        lambda state, split: on_device.eval_sums(
            functools.partial(step, state), split, batch_size=batch_size,
            num_batches=num_batches, mean=tuple(config.mean), std=tuple(config.std)),
        out_shardings=replicated)

    def evaluate_on_device(state):
      with jax.default_matmul_precision(precision):
        return _eval_metrics(jax.device_get(program(state, split)))
    return evaluate_on_device

  p_eval_step = jax.jit(step, out_shardings=replicated)

  def evaluate_batches(state):
    totals = None
    with jax.default_matmul_precision(precision):
      for i, batch in enumerate(input_pipeline.global_eval_batches(config, datasets, mesh)):
        if limit is not None and i >= limit:
          break
        sums = p_eval_step(state, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    return _eval_metrics(jax.device_get(totals or {"loss": 0.0, "correct": 0.0, "count": 0.0}))
  return evaluate_batches
