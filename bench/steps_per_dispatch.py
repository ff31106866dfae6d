"""Does running several train steps per dispatch (lax.scan) help on the device input path?

Times binary ResNet-20 steps (CE + kurtosis, CIFAR batch made on the device) dispatched one
by one, as the train loop does (a jitted batch, then the jitted step), against `--scan`
steps inside one jitted lax.scan. Only a measured gain justifies the scan in the loop.

    python bench/steps_per_dispatch.py --scan=1,10,50 [--steps=200] [--dtype=bfloat16]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scan", default="1,10,50", help="steps per dispatch to time")
  parser.add_argument("--steps", type=int, default=200, help="timed steps per setting")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--examples", type=int, default=50000)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--blocks_per_stage", type=int, default=0)
  args = parser.parse_args()

  import jax
  import numpy as np
  from bmd_jax import sharding, train
  from bmd_jax.data import on_device
  from configs import cifar10

  config = cifar10.get_config()
  config.model.precision = "binary"
  config.model.dtype = args.dtype
  if args.blocks_per_stage:
    config.model.stage_sizes = (args.blocks_per_stage,) * 3
  mesh = sharding.create_mesh(num_devices=1)
  rng = np.random.default_rng(0)
  split = on_device.upload(rng.integers(0, 256, (args.examples, 32, 32, 3), np.uint8),
                           rng.integers(0, 10, args.examples).astype(np.int32), mesh)
  model = train.create_model(config, 10)
  steps_per_epoch = args.examples // args.batch
  lr_fn = train.create_learning_rate_fn(config, steps_per_epoch)
  state = train.create_train_state(jax.random.PRNGKey(0), config, model, (32, 32, 3), lr_fn)
  step_fn = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                              steps_per_epoch=steps_per_epoch, total_epochs=config.num_epochs,
                              teacher_apply=model.apply, teacher=None)
  batch_fn = functools.partial(on_device.train_batch, seed=0, batch_size=args.batch,
                               augment="cifar", mean=config.mean, std=config.std)

  def scanned(state, split, first, count):
    def body(state, i):
      state, metrics = step_fn(state, batch_fn(split, first + i))
      return state, metrics["train/loss"]
    return jax.lax.scan(body, state, jax.numpy.arange(count))

  results = {"device": jax.devices()[0].device_kind, "dtype": args.dtype, "batch": args.batch}
  for count in [int(c) for c in args.scan.split(",")]:
    state_copy = jax.tree_util.tree_map(jax.numpy.array, state)  # donated below
    if count == 1:  # the train loop's way: two dispatches a step
      batch_jit, step_jit = jax.jit(batch_fn), jax.jit(step_fn, donate_argnums=(0,))
      run = lambda s, i: step_jit(s, batch_jit(split, np.int32(i)))[0]
    else:
      scan_jit = jax.jit(scanned, static_argnums=(3,), donate_argnums=(0,))
      run = lambda s, i, count=count: scan_jit(s, split, np.int32(i), count)[0]
    start = time.perf_counter()
    state_copy = jax.block_until_ready(run(state_copy, 0))  # compile and warm up
    compile_s = time.perf_counter() - start
    dispatches = max(1, args.steps // count)
    start = time.perf_counter()
    for d in range(dispatches):
      state_copy = run(state_copy, (d + 1) * count)
    jax.block_until_ready(state_copy)
    per_step = (time.perf_counter() - start) / (dispatches * count)
    results[f"scan_{count}"] = {"ms_per_step": 1e3 * per_step,
                                "images_per_s": args.batch / per_step,
                                "compile_s": compile_s}
    print(count, results[f"scan_{count}"], flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
