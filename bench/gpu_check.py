"""One BD-BNN train step of binary ResNet-20 on the accelerator against the same step on the
CPU: same weights, teacher and batch, at 'highest' matmul precision (JAX uses TF32 on Hopper
by default). Prints and writes (--out) a JSON of the relative differences of the loss, its
parts and every parameter's update (at step 0, SGD's update is -lr * (gradient + decay *
weight), so equal updates mean equal gradients).

    python bench/gpu_check.py --out=/tmp/gpu_check.json [--batch=128] [--dtype=bfloat16]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args():
  # argparse: bench/train_step.py, imported for its set-up, owns the absl flags' names.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="", help="write the JSON here too")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--dtype", default="float32", help="config.model.dtype of both runs")
  parser.add_argument("--blocks_per_stage", type=int, default=0, help="0: ResNet-20's 3")
  return parser.parse_args()


def one_step(device, setup):
  import jax
  from bmd_jax.training import train
  config, teacher_model, state, teacher, batch, lr_fn = setup
  step = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                           steps_per_epoch=1000, total_epochs=config.num_epochs,
                           teacher_apply=teacher_model.apply)
  state, teacher, batch = jax.device_put((state, teacher, batch), device)
  with jax.default_matmul_precision("highest"):
    new_state, metrics = jax.jit(step)(state, batch, teacher)
  updates = jax.tree_util.tree_map(lambda a, b: a - b, new_state.params, state.params)
  return jax.device_get((updates, metrics))


def relative(a, b):
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
  args = parse_args()
  import jax
  import train_step as bench  # bench/train_step.py: the timed step's set-up
  config, _, teacher_model, state, teacher, batch, lr_fn = bench.jax_setup(
      "resnet20", 32, args.batch, 10, blocks_per_stage=args.blocks_per_stage, dtype=args.dtype)
  setup = (config, teacher_model, jax.device_get(state), jax.device_get(teacher),
           jax.device_get(batch), lr_fn)
  accelerator = jax.devices()[0]
  cpu = jax.devices("cpu")[0]
  up_acc, m_acc = one_step(accelerator, setup)
  up_cpu, m_cpu = one_step(cpu, setup)
  per_param = {jax.tree_util.keystr(k): relative(a, b) for (k, a), b in zip(
      jax.tree_util.tree_leaves_with_path(up_acc), jax.tree_util.tree_leaves(up_cpu))}
  keys = [k for k in m_cpu if k.startswith("train/") or k.startswith("norms/")]
  out = {
      "device": accelerator.device_kind, "platform": accelerator.platform,
      "jax": jax.__version__, "batch": args.batch, "dtype": args.dtype,
      "loss": {"accelerator": float(m_acc["train/loss"]), "cpu": float(m_cpu["train/loss"])},
      "metrics_rel_diff": {k: relative(m_acc[k], m_cpu[k]) for k in keys},
      "max_update_rel_diff": max(per_param.values()),
      "update_rel_diff": per_param,
  }
  text = json.dumps(out, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
