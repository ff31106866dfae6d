"""Where bmd_jax's jitted train step spends its time: a JAX profiler trace of a few steps,
summed per XLA operation, with each operation's source (its HLO op_name).

    python bench/profile_train_step.py                    # ResNet-20, BD-BNN step, batch 128
    python bench/profile_train_step.py --variant=ce --top=30
    python bench/profile_train_step.py --model=resnet18 --batch=16   # sizes as train_step.py's
    BMD_JAX_CPU_FLAGS=off python bench/profile_train_step.py   # jaxlib's own XLA:CPU flags

Times are thread times summed over XLA's worker threads (on 2 cores a step's wall time is about
half their sum), per step. Convolutions that XLA:CPU runs through Eigen are not traced as
separate events; the remainder (wall x threads - listed) is mostly theirs. The trace itself
stays in --trace_dir for TensorBoard's profile plugin or Perfetto.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import os
import re
import sys
import time

from absl import app, flags

import bmd_jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step as bench  # noqa: E402  (the benchmark's setup: same config, model, batch)

_MODEL = flags.DEFINE_enum("model", "resnet20", sorted(bench.SIZES), "model to profile")
_VARIANT = flags.DEFINE_enum("variant", "full", ["full", "ce", "eval"],
                             "full BD-BNN step (teacher inside), cross-entropy alone, or the "
                             "eval step")
_PROFILED_STEPS = flags.DEFINE_integer("profiled_steps", 3, "steps inside the trace")
_TOP = flags.DEFINE_integer("top", 20, "operations listed")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "/tmp/bmd_jax_profile", "where the trace goes")


def _op_sources(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX source (op_name metadata) of it or of the computation
  it calls (a fusion's own line has none), shortened; else its output shape."""
  own, calls, inside, shapes = {}, {}, collections.defaultdict(list), {}
  computation = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(", line)
    if header:
      computation = header.group(1)
      continue
    instruction = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+)", line)
    if not instruction:
      continue
    name = instruction.group(1)
    shapes[name] = instruction.group(2)
    op_name = re.search(r'op_name="([^"]*)"', line)
    called = re.search(r"calls=%([\w.\-]+)", line)
    if op_name:
      own[name] = op_name.group(1)
      inside[computation].append(op_name.group(1))
    if called:
      calls[name] = called.group(1)
  sources = dict(own)
  for name, called in calls.items():
    if name not in own and inside.get(called):
      sources[name] = collections.Counter(inside[called]).most_common(1)[0][0]
  sources = {k: re.sub(r"^jit\([^)]*\)/", "", v) for k, v in sources.items()}
  return {name: sources.get(name, f"(output {shape})") for name, shape in shapes.items()}


def main(argv):
  del argv
  bmd_jax.configure_cpu()  # before any JAX computation; BMD_JAX_CPU_FLAGS=off skips it
  import jax
  from bmd_jax.xla_cpu import cpu_barriers
  from bmd_jax.training import evaluation, train
  image_size, batch_size, classes = bench._sizes(_MODEL.value)
  config, _, teacher_model, state, teacher, batch, lr_fn = bench.jax_setup(
      _MODEL.value, image_size, batch_size, classes, blocks_per_stage=bench._BLOCKS.value)
  step = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                           steps_per_epoch=1000, total_epochs=config.num_epochs,
                           teacher_apply=teacher_model.apply)
  full = _VARIANT.value == "full"
  if _VARIANT.value == "eval":
    compiled = jax.jit(functools.partial(evaluation.eval_step, config=config)).lower(
        state, batch).compile()
    run = lambda: jax.block_until_ready(compiled(state, batch))
  else:
    with contextlib.nullcontext() if full else bench._without_kurtosis():
      lowered = jax.jit(lambda s, b, t: step(s, b, t)).lower(
          state, batch, teacher if full else None)
    compiled = lowered.compile(cpu_barriers.compile_options(lowered))  # as train.py does
    run = lambda: jax.block_until_ready(compiled(state, batch, teacher if full else None))
  for _ in range(2):
    run()
  start = time.perf_counter()
  with jax.profiler.trace(_TRACE_DIR.value):
    for _ in range(_PROFILED_STEPS.value):
      run()
  wall_ms = 1e3 * (time.perf_counter() - start) / _PROFILED_STEPS.value

  path = max(glob.glob(os.path.join(_TRACE_DIR.value, "**", "*.xplane.pb"), recursive=True),
             key=os.path.getmtime)
  per_op, per_kind = collections.Counter(), collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        if event.name.startswith(("ThunkExecutor", "end:", "$", "PjitFunction")):
          continue
        per_op[event.name] += event.duration_ns
        per_kind[re.sub(r"[.\-]?\d+$", "", event.name)] += event.duration_ns
  to_ms = lambda ns: ns / 1e6 / _PROFILED_STEPS.value
  sources = _op_sources(compiled.as_text())
  print(f"# {_MODEL.value}, {_VARIANT.value} step, batch {batch_size}: {wall_ms:.0f} ms wall "
        f"per step (traced); listed operations {to_ms(sum(per_op.values())):.0f} ms of "
        f"thread time; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print("\n| operation kind | ms / step |\n|---|---|")
  for kind, ns in per_kind.most_common(_TOP.value):
    print(f"| {kind} | {to_ms(ns):.1f} |")
  print("\n| operation | ms / step | source |\n|---|---|---|")
  for name, ns in per_op.most_common(_TOP.value):
    print(f"| {name} | {to_ms(ns):.1f} | {sources.get(name, '')[-90:]} |")


if __name__ == "__main__":
  app.run(main)
