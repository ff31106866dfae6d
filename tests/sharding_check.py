"""Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices.

One train step of the default config's model on the same global batch, on a 1-device mesh,
an 8-device mesh (replicated state) and an 8-device mesh with FSDP; prints, as JSON, the
largest differences and what the shardings look like.
"""

import json
import sys

import jax
import numpy as np

from bmd_jax.training import sharding
from bmd_jax.configs import default
from step_setup import step_setup


def setup(config):
  _, state, local, step = step_setup(config)
  return jax.device_get(state), local, step


def one_step(setup_result, mesh, fsdp):
  """The step as train.train_stage jits it: state and batch shardings in and out, donated."""
  state, local, step = setup_result
  shardings = sharding.state_sharding(state, mesh, fsdp, min_size=256)
  state = sharding.place(state, shardings)
  batch = sharding.global_batch(local, mesh)
  replicated = sharding.replicated_sharding(mesh)
  step = jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(mesh), replicated),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))
  new_state, metrics = step(state, batch, None)
  return batch, new_state, metrics


def max_diff(a, b):
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b))
  return max(leaves)


def update_regime_diff(start, a, b):
  """(largest |a - b| over the elements whose update from `start` is a full Adam step, count of
  the others that differ by over 1e-4). Adam's first update is lr * g / (|g| + eps): where a
  gradient is near zero (|g| of order eps = 1e-8, a sum that cancels), it turns the gradient's
  rounding, which differs with the reduction order of 1 and 8 devices, into a visible update
  difference; everywhere else the update is +-lr to float rounding."""
  worst, soft_mismatches = 0.0, 0
  for p0, x, y in zip(*(jax.tree_util.tree_leaves(t) for t in (start, a, b))):
    p0, x, y = (np.asarray(t, np.float64) for t in (p0, x, y))
    update = np.abs(x - p0)
    full = update >= 0.9 * update.max()
    diff = np.abs(x - y)
    worst = max(worst, float(diff[full].max(initial=0.0)))
    soft_mismatches += int(np.sum((diff > 1e-4) & ~full))
  return worst, soft_mismatches


def main():
  config = default.get_config()
  config.batch_size = 64
  assert jax.device_count() == 8, jax.devices()
  one = sharding.create_mesh(num_devices=1)
  eight = sharding.create_mesh()
  start = setup(config)
  _, state1, metrics1 = one_step(start, one, False)
  batch8, state8, metrics8 = one_step(start, eight, False)
  _, state_f, metrics_f = one_step(start, eight, True)

  image = batch8["image"]
  param_specs = {jax.tree_util.keystr(k): str(v.sharding.spec)
                 for k, v in jax.tree_util.tree_leaves_with_path(state_f.params)}
  sharded_mu = [str(x.sharding.spec) for x in jax.tree_util.tree_leaves(state_f.opt_state)
                if hasattr(x, "sharding") and sharding.DATA_AXIS in str(x.sharding.spec)]
  errors = {}
  for name, fn in [("batch", lambda: sharding.check_batch_size(60, eight)),
                   ("mesh", lambda: sharding.create_mesh(num_devices=16))]:
    try:
      fn()
    except ValueError as e:
      errors[name] = str(e)
  out = {
      "batch_spec": str(image.sharding.spec),
      "batch_shard_shapes": sorted({tuple(s.data.shape) for s in image.addressable_shards}),
      "batch_shard_devices": len({s.device for s in image.addressable_shards}),
      "loss": [float(metrics1["train/loss"]), float(metrics8["train/loss"]),
               float(metrics_f["train/loss"])],
      "params_diff_8": update_regime_diff(start[0].params, state1.params, state8.params),
      "stats_diff_8": max_diff(state1.batch_stats, state8.batch_stats),
      "params_diff_fsdp": update_regime_diff(start[0].params, state8.params, state_f.params),
      "stats_diff_fsdp": max_diff(state8.batch_stats, state_f.batch_stats),
      "opt_diff_fsdp": max_diff(state8.opt_state, state_f.opt_state),
      "params_update_size": max_diff(state1.params, start[0].params),
      "fsdp_param_specs": param_specs,
      "fsdp_sharded_opt_leaves": len(sharded_mu),
      "replicated_param_specs": sorted({str(x.sharding.spec)
                                        for x in jax.tree_util.tree_leaves(state8.params)}),
      "errors": errors,
  }
  json.dump(out, sys.stdout)


if __name__ == "__main__":
  main()
