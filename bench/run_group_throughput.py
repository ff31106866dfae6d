"""Train throughput of K runs in one program (training/run_group*.py) against one run.

Issue 26 item 6 for run groups. --recipe=digits (the default): bmd_jax/configs/default.py's tiny
binary CNN (small_cnn on the built-in 8x8 digits, batch --batch), its loss CE + kurtosis.
--recipe=cifar10: ResNet-20's step 1 of the CIFAR-10 recipe (binary activations, EDE, CE +
kurtosis; --blocks per stage, 3 by default) on synthetic CIFAR-shaped images (no data needed:
the speed of a step does not depend on the pixels), the GPU window's workload. Both on the
device input path. Timed, in alternating rounds (bench/alternating_rounds.py's rule: the machines
are shared), --steps steps each after one untimed round that compiles:

    single   one run's program as the loop compiles it (step_runner.StepRunner)
    K=k      run_group_step.compiled_group_steps: k runs (seeds 0..k-1) in one program

with --steps_per_dispatch steps a dispatch (CPU's default: 1). A round's figure includes one
read of the metric sums, as at a log line.

    python bench/run_group_throughput.py                     # K = 1, 2, 4; 3 rounds of 20 steps
    python bench/run_group_throughput.py --runs=1,2,4,8 --steps=40 --results_dir=docs/results
    python bench/run_group_throughput.py --recipe=cifar10 --batch=128 --runs=1,4,8,16 \
        --steps=100 --steps_per_dispatch=0 --json=-        # a GPU window (bench/gpu_run.sh)

Prints images/s in total and per run, per round, and each round's total over the single
run's; writes throughput_<device>_<model>_group-K<k>.json per K to --results_dir, and all the
records as one JSON list to --json ('-': printed, for a window whose returned files are few).
--steps_per_dispatch=0: a round's steps in one dispatch.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"digits": "small_cnn-digits", "cifar10": "resnet20-cifar10-step1"}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--recipe", default="digits", choices=sorted(MODELS))
  parser.add_argument("--blocks", type=int, default=3, help="--recipe=cifar10: blocks a stage")
  parser.add_argument("--runs", default="1,2,4", help="the K values, comma-separated")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20, help="steps a round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps_per_dispatch", type=int, default=1)
  parser.add_argument("--results_dir", default="", help="where the JSON records go ('': none)")
  parser.add_argument("--json", default="", help="all records as one list here ('-': stdout)")
  return parser.parse_args(argv)


def setup(args):
  """(config, datasets, mesh, step options, one run's initial state)."""
  import jax
  from bmd_jax import models
  from bmd_jax.infra import config_files
  from bmd_jax.training import input_pipeline, sharding, stages, train

  if args.recipe == "cifar10":
    config = stages.stage_list(config_files.load("cifar10"))[0].config  # step 1
    config.dataset = "synthetic"
    config.synthetic_train_examples = 50_000  # CIFAR-10's epoch
    if args.blocks != 3:
      config.model.stage_sizes = (args.blocks,) * 3
  else:
    config = config_files.load("default")
  config.input_path = "device"
  config.batch_size = args.batch
  config.steps_per_dispatch = args.steps_per_dispatch
  config.num_train_steps = 10_000  # a schedule long enough for every round
  datasets = input_pipeline.create_datasets(config)
  mesh = sharding.create_mesh(num_devices=1)
  info = datasets.info
  model = train.create_model(config, info.num_classes)
  steps_per_epoch = info.num_train // config.batch_size
  options = dict(steps_per_epoch=steps_per_epoch,
                 total_epochs=config.num_train_steps / steps_per_epoch,
                 teacher_apply=model.apply,
                 kurtosis_layers=tuple(models.kurtosis_layers(model, info.image_shape, True)))

  def state(seed):
    lr_fn = train.create_learning_rate_fn(config, steps_per_epoch)
    return train.create_train_state(jax.random.PRNGKey(seed), config, model,
                                    info.image_shape, lr_fn)
  return config, datasets, mesh, options, state


class Single:
  """One run's steps as train.train_stage dispatches them."""

  def __init__(self, config, datasets, mesh, options, state):
    import functools
    from bmd_jax.training import input_pipeline, sharding, step_runner, train
    lr_fn = train.create_learning_rate_fn(config, options["steps_per_epoch"])
    step_fn = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                                **options)
    train_input = input_pipeline.create_train_input(config, datasets, mesh, config.seed)
    self.state = sharding.replicate(state(0), mesh)
    self.runner = step_runner.StepRunner(
        config, step_fn, train_input, mesh, sharding.replicated_sharding(mesh), self.state,
        None, None, datasets.info.image_shape)
    self.runs, self.done = 1, 0

  def run(self, steps: int) -> None:
    from bmd_jax.training import dispatch
    acc, end = self.runner.empty(), self.done + steps
    while self.done < end:  # dispatches as the loop's schedule ends them
      stop = min(end, self.done + (self.runner.max_steps_per_dispatch or steps))
      self.state, acc = self.runner(self.state, acc, self.done, stop)
      self.done = stop
    dispatch.read(acc)  # one read, as a log line does


class Group:
  """K runs (seeds 0..K-1) in one program, as run_group.py dispatches them."""

  def __init__(self, runs, config, datasets, mesh, options, state):
    import jax
    import numpy as np
    from bmd_jax.data import on_device
    from bmd_jax.training import run_group_step, sharding
    configs = []
    for seed in range(runs):
      run = config.copy_and_resolve_references()
      run.seed = seed
      configs.append(run)
    self.values = sharding.replicate(
        run_group_step.traced_values(configs, options["kurtosis_layers"]), mesh)
    self.states = sharding.replicate(
        run_group_step.stack_states([state(seed) for seed in range(runs)]), mesh)
    self.program, step_fn, batches_fn = run_group_step.compiled_group_steps(
        config, mesh, config.steps_per_dispatch != 1, **options)
    self.split = on_device.upload_source(datasets.train, mesh)
    batch = jax.eval_shape(batches_fn, self.split, 0, self.values["seed"])
    shapes = jax.eval_shape(step_fn, self.states, batch, None, None, self.values)[1]
    self.empty = lambda: run_group_step.empty_accumulators(shapes, runs)
    self.runs, self.done, self.limit, self._np = runs, 0, config.steps_per_dispatch, np

  def run(self, steps: int) -> None:
    import jax
    acc, end = self.empty(), self.done + steps
    while self.done < end:
      count = min(self.limit or steps, end - self.done)
      self.states, acc = self.program(self.states, acc, self.split, None, None, self.values,
                                      self._np.int32(self.done), self._np.int32(count))
      self.done += count
    jax.device_get(acc)  # one read, as a log line does


def record(args, name, way, device, rounds, single_rounds, load, command) -> dict:
  total = statistics.median(rounds)
  return {
      "device": device, "model": MODELS[args.recipe], "framework": "jax", "what": name,
      "batch_size": args.batch, "runs": way.runs,
      "steps_per_dispatch": args.steps_per_dispatch,
      "images_per_second_total": total, "images_per_second_per_run": total / way.runs,
      "rounds": rounds, "single_run_rounds": single_rounds,
      "total_over_single_run": [r / s for r, s in zip(rounds, single_rounds)],
      "steps_per_round": args.steps, "load_average": load,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": command,
  }


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  command = "python bench/run_group_throughput.py " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  import bmd_jax
  bmd_jax.configure_cpu()
  import jax
  device = jax.devices()[0].device_kind
  load_before = os.getloadavg()
  config, datasets, mesh, options, state = setup(args)
  ways = {"single": Single(config, datasets, mesh, options, state)}
  for k in (int(k) for k in args.runs.split(",") if k):
    ways[f"K={k}"] = Group(k, config, datasets, mesh, options, state)
  for name, way in ways.items():  # compiles and warms up
    start = time.perf_counter()
    way.run(args.steps)
    print(f"{name}: first round {time.perf_counter() - start:.1f} s", flush=True)
  ips = {name: [] for name in ways}  # images a second, all runs together
  for r in range(args.rounds):
    for name, way in ways.items():
      start = time.perf_counter()
      way.run(args.steps)
      ips[name].append(way.runs * args.steps * args.batch / (time.perf_counter() - start))
    print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in ips.items())
          + f" images/s; load {os.getloadavg()[0]:.1f}", flush=True)
  load = {"before": load_before, "after": os.getloadavg()}
  print(f"\n{device}, {MODELS[args.recipe]}, batch {args.batch}, {args.steps_per_dispatch} step(s) a "
        f"dispatch, {args.rounds} rounds of {args.steps} steps; load average "
        f"{load_before[0]:.1f} before, {load['after'][0]:.1f} after")
  print(f"{'':8s} {'total img/s':>11s} {'per run':>8s}  total per round / single's per round")
  for name, values in ips.items():
    total = statistics.median(values)
    print(f"{name:8s} {total:11.0f} {total / ways[name].runs:8.0f}  "
          + ", ".join(f"{v:.0f}" for v in values) + "  / "
          + ", ".join(f"{v / s:.2f}" for v, s in zip(values, ips["single"])))
  import json
  records = {name: record(args, name, way, device, ips[name], ips["single"], load, command)
             for name, way in ways.items() if name != "single"}
  if args.results_dir:
    os.makedirs(args.results_dir, exist_ok=True)
    for name, rec in records.items():
      path = os.path.join(args.results_dir, f"throughput_{device.lower().replace(' ', '-')}_"
                          f"{MODELS[args.recipe]}_group-K{rec['runs']}.json")
      with open(path, "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
      print("wrote", os.path.relpath(path, REPO))
  if args.json == "-":
    print("group throughput records:", json.dumps(list(records.values())))
  elif args.json:
    with open(args.json, "w") as f:
      json.dump(list(records.values()), f, indent=1)
  return ips


if __name__ == "__main__":
  main()
