"""Train throughput of the loop's ways of dispatching steps, against the PyTorch twin.

Issue 26, item 6, for K = 1 run (the K-runs-in-one-program engine does not exist yet:
--runs accepts only 1). Binary ResNet-20 (bmd_jax/configs/cifar10.py's model, bench/train_step.py's
config) on a CIFAR-sized split held on the device (data/on_device.py; random uint8 images,
50,000 by default, so the per-epoch permutation costs what CIFAR-10's does), timed as:

    old      the loop before 7e72626: the batch made by its own jitted call
             (on_device.DeviceTrainInput.batch), then the jitted step (dispatch.host_step)
    1        one step a dispatch, its batch made inside (dispatch.device_steps, loop=False)
    N        N steps a dispatch in one while loop (dispatch.device_steps, loop=True)
    torch-eager, torch-compile
             bench/torch_reference.py's step on a fixed batch (no batch making), the same
             initial weights (load_flax_variables). torch-compile is torch.compile of that step
             in mode "reduce-overhead" (CUDA graphs) on a GPU; on CPU, where CUDA graphs do not
             apply, in the default mode.

The JAX programs are step_runner.StepRunner's (so cpu_barriers.jit, as the loop compiles them);
'old' is StepRunner's host-batch path fed by DeviceTrainInput.batch, which is exactly what the
loop did. Every configuration starts from the same weights and trains on the same steps'
batches. Each round times every configuration once, in turn (bench/alternating_rounds.py's
rule: the machines are shared), for --steps steps each (rounded up to whole dispatches), after
one untimed round that compiles and warms up; a round's figure includes one read of the metric
sums, as at a log line.

    python bench/steps_per_dispatch.py                           # resnet20, batch 128, CE+kurtosis
    python bench/steps_per_dispatch.py --dispatch=old,1,10,50 --steps=50 --rounds=3
    python bench/steps_per_dispatch.py --terms=step2             # + WDM and distillation, teacher
    python bench/steps_per_dispatch.py --xla_gpu_command_buffer=FUSION,CUBLAS,CUDNN,WHILE
    python bench/steps_per_dispatch.py --blocks_per_stage=1 --batch=8 --steps=4 --rounds=2 \
        --examples=256 --torch=eager --results_dir=/tmp/r         # a quick check

Prints the per-round and median images/s and the ratio of each configuration to 'old' per
round, and writes one JSON record per configuration to --results_dir as
throughput_<device>_<model>_<what>.json (device: JAX's device_kind, slugged).
--xla_gpu_command_buffer sets XLA_FLAGS' --xla_gpu_enable_command_buffer (the op types XLA:GPU
may capture into CUDA graphs; '' leaves XLA's default) after checking, in a child process,
that this jaxlib accepts the value; on CPU it is parsed but has no effect.

Measured on CPU: docs/BENCHMARKS.md, "Steps per dispatch, 2026-12-06" (there the looped
program runs 8-14x slower: XLA:CPU leaves the conv gradients inside a loop body in forms it
runs as naive loops) and "Steps per dispatch with canonical conv gradients" (conv_grads'
fix, after which it does not).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dispatch", default="old,1,10,50",
                      help="JAX configurations: 'old' and/or steps per dispatch")
  parser.add_argument("--torch", default="eager,compile",
                      help="PyTorch twin configurations among eager, compile; '' for none")
  parser.add_argument("--steps", type=int, default=50,
                      help="timed steps per configuration and round (whole dispatches)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--examples", type=int, default=50000, help="size of the device split")
  parser.add_argument("--blocks_per_stage", type=int, default=0, help="0: ResNet-20's 3")
  parser.add_argument("--terms", choices=("step1", "step2"), default="step1",
                      help="step1: CE + kurtosis; step2: + WDM and distillation from a frozen "
                      "binary_activations teacher run inside the step")
  parser.add_argument("--dtype", default="float32", help="config.model.dtype (JAX only)")
  parser.add_argument("--store_binary_input", type=int, choices=(0, 1), default=1,
                      help="config.model.store_binary_input: 0 leaves out the binary inputs' "
                      "barriers, which XLA:CPU keeps in a one-step program but strips in a loop")
  parser.add_argument("--runs", type=int, default=1,
                      help="K runs in one program: only 1 until that engine exists (issue 26)")
  parser.add_argument("--xla_gpu_command_buffer", default=None,
                      help=f"value of XLA_FLAGS' {COMMAND_BUFFER_FLAG} (e.g. "
                      "FUSION,CUBLAS,CUDNN,WHILE,CONDITIONAL); unset: XLA's default")
  parser.add_argument("--torch_device", default="auto", help="auto: cuda if available, else cpu")
  parser.add_argument("--results_dir", default=os.path.join(REPO, "docs", "results"),
                      help="where the throughput_*.json records go; '' for none")
  args = parser.parse_args(argv)
  if args.runs != 1:
    parser.error("--runs: only 1 for now; K runs in one program (issue 26, item 2) is not "
                 "built yet")
  if args.rounds < 1 or args.steps < 1:
    parser.error("--rounds and --steps must be positive")
  return args


def set_command_buffer_flag(value: str) -> None:
  """Adds COMMAND_BUFFER_FLAG=value to XLA_FLAGS once a child process showed that this
  jaxlib parses it (XLA aborts at backend start on a flag or value it does not know)."""
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith(COMMAND_BUFFER_FLAG))
  flags = f"{flags} {COMMAND_BUFFER_FLAG}={value}".strip()
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                         env={**os.environ, "XLA_FLAGS": flags}, capture_output=True,
                         text=True, timeout=300)
  if probe.returncode:
    # XLA prints its whole flag list after the reason: keep the lines that give the reason.
    reason = [line for line in probe.stderr.splitlines()
              if any(word in line for word in ("Illegal", "Unknown", "Check failed"))]
    sys.exit(f"this jaxlib refuses XLA_FLAGS={flags!r}:\n" + "\n".join(reason[:5]))
  os.environ["XLA_FLAGS"] = flags


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


# --- JAX ---------------------------------------------------------------------------------

class _HostBatches:
  """DeviceTrainInput's jitted batches, seen by StepRunner as a host input: the loop before
  7e72626 (a batch program, then a step program, each step)."""

  def __init__(self, device_input):
    self.batch = device_input.batch


def jax_setup(args):
  """(config, state, teacher, step_fn, device input, mesh, state shardings, image shape)."""
  import jax
  import numpy as np
  import train_step as bench_train_step
  from bmd_jax import models
  from bmd_jax.training import sharding, train
  from bmd_jax.data import on_device

  config = bench_train_step.jax_config("resnet20", args.blocks_per_stage, args.dtype)
  if args.terms == "step1":  # BD-BNN step 1's terms: CE + kurtosis, no teacher
    config.loss.wdm.weight = 0.0
    config.loss.kd.weight = 0.0
  config.batch_size = args.batch
  config.model.store_binary_input = bool(args.store_binary_input)
  mesh = sharding.create_mesh(num_devices=1)
  rng = np.random.default_rng(0)
  split = on_device.upload(rng.integers(0, 256, (args.examples, 32, 32, 3), np.uint8),
                           rng.integers(0, 10, args.examples).astype(np.int32), mesh)
  device_input = on_device.DeviceTrainInput(split, mesh, seed=0, batch_size=args.batch,
                                            augment="cifar", mean=config.mean, std=config.std)
  image_shape = (32, 32, 3)
  model = train.create_model(config, 10)
  steps_per_epoch = args.examples // args.batch
  lr_fn = train.create_learning_rate_fn(config, steps_per_epoch)
  state = train.create_train_state(jax.random.PRNGKey(0), config, model, image_shape, lr_fn)
  teacher_model = train.create_model(config, 10, config.teacher_precision)
  teacher, wdm_layers = None, None
  if args.terms == "step2":
    t_params, t_stats = train.initialized(jax.random.PRNGKey(1), teacher_model, image_shape)
    teacher = sharding.replicate({"params": t_params, "batch_stats": t_stats}, mesh)
    wdm_layers = tuple(models.wdm_layers(model, image_shape,
                                         config.loss.wdm.include_shortcuts))
  kurtosis_layers = models.kurtosis_layers(model, image_shape,
                                           config.loss.kurtosis.include_shortcuts)
  # As train.train_and_evaluate builds it.
  step_fn = functools.partial(
      train.train_step, config=config, learning_rate_fn=lr_fn, steps_per_epoch=steps_per_epoch,
      total_epochs=config.num_epochs, teacher_apply=teacher_model.apply, distill_apply=None,
      kurtosis_layers=tuple(kurtosis_layers), wdm_layers=wdm_layers)
  shardings = sharding.state_sharding(state, mesh, False)
  state = sharding.place(state, shardings)
  return config, state, teacher, step_fn, device_input, mesh, shardings, image_shape


class JaxWay:
  """One JAX configuration: its own copy of the state, trained from step 0 on."""

  def __init__(self, what, setup):
    import jax
    import jax.numpy as jnp
    from bmd_jax.training import step_runner
    config, state, teacher, step_fn, device_input, mesh, shardings, image_shape = setup
    config = copy.deepcopy(config)
    self.what = what
    if what == "old":
      self.steps_per_dispatch = 1
      train_input = _HostBatches(device_input)
    else:
      self.steps_per_dispatch = int(what)
      train_input = device_input
    config.steps_per_dispatch = self.steps_per_dispatch
    self._runner = step_runner.StepRunner(config, step_fn, train_input, mesh, shardings, state,
                                    teacher, None, image_shape)
    assert self._runner.on_device == (what != "old")
    self._state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)  # donated
    self._step = 0

  def run(self, steps: int) -> int:
    """Runs at least `steps` steps in whole dispatches, reads the metric sums once; the count."""
    import jax
    from bmd_jax.training import dispatch
    acc = self._runner.empty()
    dispatches = -(-steps // self.steps_per_dispatch)
    for _ in range(dispatches):
      end = self._step + self.steps_per_dispatch
      self._state, acc = self._runner(self._state, acc, self._step, end)
      self._step = end
    means = dispatch.read(acc)["means"]  # waits for the last dispatch, as a log line does
    jax.block_until_ready(self._state)
    assert means["train/loss"] == means["train/loss"], f"{self.what}: loss is NaN"
    return dispatches * self.steps_per_dispatch

  def compilations(self) -> int:
    return self._runner.compilations()


# --- PyTorch -----------------------------------------------------------------------------

class TorchWay:
  """The PyTorch twin's step on a fixed batch (the JAX split's step-0 batch), from the JAX
  state's initial weights."""

  def __init__(self, what, args, setup, device):
    import jax
    import torch
    import torch_reference as ref
    import train_step as bench_train_step
    config, state, teacher, _, device_input, _, _, _ = setup
    self.what, self.steps_per_dispatch = what, 1
    student, teacher_twin, _ = bench_train_step.torch_models("resnet20", 10,
                                                             args.blocks_per_stage)
    ref.load_flax_variables(student, jax.device_get(
        {"params": state.params, "batch_stats": state.batch_stats}))
    if teacher is not None:
      ref.load_flax_variables(teacher_twin, jax.device_get(teacher))
    student, teacher_twin = student.to(device), teacher_twin.to(device)
    est = ref.default_estimator_args(0.0)
    ref.set_estimator_args(student, est)
    ref.set_estimator_args(teacher_twin, est)
    batch = jax.device_get(device_input.batch(0))
    images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)
    labels = torch.from_numpy(batch["label"].astype("int64")).to(device)
    optimizer = ref.make_optimizer(student, config.optimizer, config.learning_rate,
                                   config.momentum, config.weight_decay,
                                   config.weight_decay_kernels_only)
    step = ref.train_step
    if what == "compile":
      self.mode = "reduce-overhead" if device.startswith("cuda") else "default"
      step = torch.compile(ref.train_step, mode=None if self.mode == "default" else self.mode)
    self._step = functools.partial(
        step, student, optimizer, images, labels,
        teacher_twin if teacher is not None else None,
        kurtosis_weight=config.loss.kurtosis.weight, wdm_weight=config.loss.wdm.weight,
        kd_weight=config.loss.kd.weight, kurtosis_target=config.loss.kurtosis.target,
        wdm_temperature=config.loss.wdm.temperature)
    self._synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None

  def run(self, steps: int) -> int:
    for _ in range(steps):
      loss, _ = self._step()
    float(loss)  # one read, as a log line does
    self._synchronize()
    return steps


# --- driver ------------------------------------------------------------------------------

def record(args, what, way, device_kind, platform, model_name, rounds_ips, compile_s, load,
           command) -> dict:
  median = statistics.median(rounds_ips)
  framework = "jax" if isinstance(way, JaxWay) else "torch"
  return {
      "device": device_kind, "platform": platform, "model": model_name, "framework": framework,
      "what": what, "terms": args.terms, "batch_size": args.batch, "runs": args.runs,
      "steps_per_dispatch": way.steps_per_dispatch,
      "images_per_second_total": median, "images_per_second_per_run": median / args.runs,
      "rounds": rounds_ips, "steps_per_round": args.steps, "first_round_s": compile_s,
      "torch_compile_mode": getattr(way, "mode", None), "dtype": args.dtype,
      "store_binary_input": bool(args.store_binary_input),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": load,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": command,
  }


def main(argv=None):
  args = parse_args(argv)
  command = "python bench/steps_per_dispatch.py " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  if args.xla_gpu_command_buffer is not None:
    set_command_buffer_flag(args.xla_gpu_command_buffer)
  import bmd_jax
  bmd_jax.configure_cpu()  # before any JAX computation; a no-op off CPU
  import jax
  device = jax.devices()[0]
  load_before = os.getloadavg()
  setup = jax_setup(args)
  ways = {}
  for what in [w for w in args.dispatch.split(",") if w]:
    ways[what if what == "old" else f"{int(what)}-per-dispatch"] = JaxWay(what, setup)
  torch_ways = [w for w in args.torch.split(",") if w]
  if torch_ways:
    import torch
    torch_device = args.torch_device
    if torch_device == "auto":
      torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    for what in torch_ways:
      if what not in ("eager", "compile"):
        sys.exit(f"--torch: {what!r} is not among eager, compile")
      ways[f"torch-{what}"] = TorchWay(what, args, setup, torch_device)

  compile_s = {}
  for name, way in ways.items():  # compile and warm up: one untimed round
    start = time.perf_counter()
    way.run(args.steps if isinstance(way, TorchWay) else way.steps_per_dispatch)
    compile_s[name] = time.perf_counter() - start
    print(f"{name}: first round {compile_s[name]:.1f} s", flush=True)
  ips = {name: [] for name in ways}
  for r in range(args.rounds):
    for name, way in ways.items():
      start = time.perf_counter()
      steps = way.run(args.steps)
      ips[name].append(steps * args.batch / (time.perf_counter() - start))
    print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in ips.items())
          + f" images/s; load {os.getloadavg()[0]:.1f}", flush=True)
  load = {"before": load_before, "after": os.getloadavg()}

  blocks = args.blocks_per_stage or 3
  model_name = "resnet20" if blocks == 3 else f"resnet{6 * blocks + 2}-cifar"
  print(f"\n{device.device_kind} ({device.platform}), {model_name}, batch {args.batch}, "
        f"{args.terms} terms, {args.rounds} rounds of {args.steps} steps; load average "
        f"{load_before[0]:.1f} before, {load['after'][0]:.1f} after; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"{'configuration':20s} {'median img/s':>12s}  per round (img/s)   / old per round")
  for name, values in ips.items():
    ratios = (" " + ", ".join(f"{v / o:.2f}" for v, o in zip(values, ips["old"]))
              if "old" in ips else "")
    print(f"{name:20s} {statistics.median(values):12.0f}  "
          + ", ".join(f"{v:.0f}" for v in values) + f"  {ratios}")
  for name, way in ways.items():
    if isinstance(way, JaxWay) and way.compilations() != 1:
      print(f"warning: {name} compiled {way.compilations()} programs", file=sys.stderr)

  if args.results_dir:
    os.makedirs(args.results_dir, exist_ok=True)
    suffix = "" if args.terms == "step1" else f"_{args.terms}"
    for name, way in ways.items():
      rec = record(args, name, way, device.device_kind, device.platform, model_name, ips[name],
                   compile_s[name], load, command)
      path = os.path.join(args.results_dir, f"throughput_{slug(device.device_kind)}_"
                          f"{model_name}_{'jax-' if name[0].isdigit() else ''}"
                          f"{'jax-old-loop' if name == 'old' else name}{suffix}.json")
      with open(path, "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
      print("wrote", os.path.relpath(path, REPO))
  return ips


if __name__ == "__main__":
  main()
