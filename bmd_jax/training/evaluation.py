"""Evaluation: the eval step (sums over the valid rows of a padded batch) and the evaluator,
which runs the whole eval split at a fixed matmul precision (on the device input path, in
one program).

Two top-1 figures come out of the same pass: ``eval/accuracy`` over every example of the split,
and ``eval/accuracy_drop_last`` over its full batches only. The latter is what IR-Net's CIFAR
trainer reports: its test loader drops the last, short batch (PyTorch's ``drop_last``), so it
counts the first floor(N / eval_batch_size) * eval_batch_size examples: 9,984 of CIFAR-10's
10,000 at batch 128 (78 batches), the same 9,984 at the CIFAR recipe's 256 (39 batches), and
every example at a batch that divides the split (bench/gpu_train.py's 2,000).
``eval/examples_drop_last`` records how many it covers.

In a pass in the split's order only the last batch is short, so a batch whose rows are all
valid is one IR-Net keeps. That order holds on the device input path, and on the grain path in
one process without worker processes. With several processes or workers each batches its own
share, and the figure covers the batches that came out full (as many examples or fewer).
"""

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
  """Sums of loss, correct predictions and examples over the valid rows of a padded batch;
  `*_drop_last`: the same sums when the batch is full, else 0 (see the module's docstring)."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"], train=False,
                          estimator_args=estimator_args(config, progress))
  mask = batch["mask"].astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  full = jnp.all(batch["mask"]).astype(jnp.float32)
  sums = {"loss": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}
  return {**sums, "correct_drop_last": full * sums["correct"],
          "count_drop_last": full * sums["count"]}


def _eval_metrics(totals: dict) -> dict[str, float]:
  """The figures from the summed eval steps; no drop_last figure when the split is shorter
  than one batch (IR-Net's loader would evaluate nothing)."""
  count = max(float(totals["count"]), 1.0)
  metrics = {"eval/loss": float(totals["loss"]) / count,
             "eval/accuracy": float(totals["correct"]) / count}
  kept = float(totals["count_drop_last"])
  if kept > 0:  # how many it covers is recorded: the figure is IR-Net's at batch 128 only
    metrics["eval/accuracy_drop_last"] = float(totals["correct_drop_last"]) / kept
    metrics["eval/examples_drop_last"] = kept
  return metrics


def create_evaluator(config, datasets, mesh):
  """fn(state) -> {'eval/loss', 'eval/accuracy', 'eval/accuracy_drop_last',
  'eval/examples_drop_last'} over the eval split (or its first
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
    return _eval_metrics(jax.device_get(totals or dict.fromkeys(
        ("loss", "correct", "count", "correct_drop_last", "count_drop_last"), 0.0)))
  return evaluate_batches
