"""Training images per second against the number of devices in the data-parallel mesh.

    python bench/scaling.py --simulated_devices=8 [--model=small_cnn --batch_size=256]

With --simulated_devices=N (CPU), XLA splits this machine's cores into N devices, so the
figures show the cost of sharding (collectives, smaller per-device work), not a speed-up;
on a GPU/TPU host leave it out and the mesh runs over the real devices. For each device count
that divides the global batch (1, 2, 4, ...), the train step (training/train.py) is jitted over
a mesh of that many devices, exactly as train.train_stage does, and timed on random data:
--rounds rounds, the device counts alternating within each, --steps steps per round. Prints
one JSON line per device count (ms per step per round, their median, images/s from it).
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time


def parse():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--simulated_devices", type=int, default=0)
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--image_size", type=int, default=8)
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--batch_size", type=int, default=256, help="global batch")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
  parser.add_argument("--fsdp", action="store_true")
  return parser.parse_args()


def main():
  args = parse()
  if args.simulated_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.simulated_devices}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np
  import bmd_jax
  from bmd_jax.training import sharding, train

  bmd_jax.configure_cpu()  # before any JAX computation
  from bmd_jax.configs import default

  config = default.get_config()
  config.model.name = args.model
  shape = (args.image_size, args.image_size, args.channels)
  model = train.create_model(config, 10)
  lr_fn = train.create_learning_rate_fn(config, 100)
  state0 = jax.device_get(train.create_train_state(jax.random.PRNGKey(0), config, model,
                                                   shape, lr_fn))
  rng = np.random.default_rng(0)
  local = {"image": rng.normal(size=(args.batch_size, *shape)).astype(np.float32),
           "label": rng.integers(0, 10, args.batch_size).astype(np.int32)}
  step_fn = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                              steps_per_epoch=100, total_epochs=1.0, teacher_apply=model.apply)
  steps = {}  # device count -> (jitted step, its state, its batch), compiled and warm
  count = 1
  while count <= jax.device_count():
    if args.batch_size % count == 0:
      mesh = sharding.create_mesh(num_devices=count)
      shardings = sharding.state_sharding(state0, mesh, args.fsdp)
      replicated = sharding.replicated_sharding(mesh)
      step = jax.jit(step_fn, in_shardings=(shardings, sharding.batch_sharding(mesh),
                                            replicated),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))
      state, batch = sharding.place(state0, shardings), sharding.global_batch(local, mesh)
      for _ in range(2):  # compile and warm up
        state, metrics = step(state, batch, None)
      jax.block_until_ready(metrics)
      steps[count] = [step, state, batch]
    count *= 2

  # The device counts alternate within each round: load from other jobs then falls on all.
  seconds = {count: [] for count in steps}
  for _ in range(args.rounds):
    for count, entry in steps.items():
      step, state, batch = entry
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = step(state, batch, None)
      jax.block_until_ready((state, metrics))
      seconds[count].append(time.perf_counter() - start)
      entry[1] = state
  for count, per_round in seconds.items():
    ms = [1000 * s / args.steps for s in per_round]
    print(json.dumps({
        "devices": count, "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind, "model": args.model,
        "global_batch": args.batch_size, "fsdp": args.fsdp, "rounds": args.rounds,
        "ms_per_step_per_round": [round(m, 2) for m in ms],
        "ms_per_step": round(statistics.median(ms), 2),
        "images_per_second": round(1000 * args.batch_size / statistics.median(ms), 1),
        "load_average": os.getloadavg()}), flush=True)


if __name__ == "__main__":
  main()
