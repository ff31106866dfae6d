"""Images per second of bmd_jax's jitted BD-BNN train step and eval step, against an equivalent
PyTorch eager implementation (bench/torch_reference.py) timed in the same run.

    python bench/train_step.py                        # resnet20, 32x32, batch 128
    python bench/train_step.py --models=resnet20,resnet18   # + ResNet-18, 224x224, batch 32
    python bench/train_step.py --quick                # fewer steps
    python bench/train_step.py --malloc=tuned         # both frameworks with PERF-NOTES' glibc tunables
    python bench/train_step.py --frameworks=jax,torch,jax_xla_defaults  # + bmd_jax without its
                                                      # XLA:CPU flags (xla_cpu/xla_flags.py)

Variants, each timed as the median of --steps steps after --warmup steps (fixed random batch,
no input pipeline), per framework:

    full        the BD-BNN step: CE + kurtosis + WDM + distillation, with the frozen teacher
                (the same model in binary_activations precision) run inside the step
    ce_kurt     CE + kurtosis, no teacher (what tests/test_bench_train_step.py checks equal)
    ce          cross-entropy alone (bmd_jax: train.train_step with the kurtosis term stubbed out
                at trace time; everything else - optimizer, metrics - unchanged)
    teacher     the teacher's inference forward alone
    eval        the eval step (inference forward + loss and accuracy sums)

The regularizers' cost is (full - teacher - ce) / ce. JAX's compile time is lower + compile of
each step. Each framework and model runs in its own child process, started one after the other
with the same environment (so GLIBC_TUNABLES, threads and load are alike); its peak memory is
that process's ru_maxrss (peak resident set size, whole process: runtime, compiled programs,
weights and the largest step's buffers - the high-water mark over all its variants).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from unittest import mock

from absl import app, flags

import bmd_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TUNED_MALLOC = ("glibc.malloc.mmap_threshold=4294967296:"
                "glibc.malloc.trim_threshold=17179869184")
VARIANTS = ("full", "ce_kurt", "ce", "teacher", "eval")
FRAMEWORKS = ("jax", "torch", "jax_xla_defaults")
RATIOS = (("jax", "torch"), ("jax", "jax_xla_defaults"))  # printed where both were timed
# model -> (image size, batch size, number of classes)
SIZES = {"resnet20": (32, 128, 10), "resnet18": (224, 32, 1000)}

_MODELS = flags.DEFINE_list("models", ["resnet20"], f"models among {sorted(SIZES)}")
_FRAMEWORKS = flags.DEFINE_list(
    "frameworks", ["jax", "torch"], "among jax, torch and jax_xla_defaults (bmd_jax with "
    "BMD_JAX_CPU_FLAGS=off: jaxlib's own XLA:CPU flags, see bmd_jax/xla_cpu/xla_flags.py)")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"among {VARIANTS}")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per variant (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps before timing")
_QUICK = flags.DEFINE_bool("quick", False, "5 timed steps after 2 warm-up steps")
_BATCH = flags.DEFINE_integer("batch", 0, "batch size; 0: the model's default")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "image size; 0: the model's default")
_BLOCKS = flags.DEFINE_integer("blocks_per_stage", 0, "resnet20 only: blocks per stage, for a "
                               "tiny smoke run; 0: the model's (3)")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "alternate jax/torch children this many times")
_MALLOC = flags.DEFINE_enum("malloc", "inherit", ["inherit", "tuned", "default"],
                            "GLIBC_TUNABLES for both children: as inherited, PERF-NOTES' "
                            "mmap/trim thresholds, or unset")
_JSON = flags.DEFINE_string("json", "", "also write the results to this file")
_DTYPE = flags.DEFINE_string("dtype", "float32", "bmd_jax's config.model.dtype ('bfloat16': "
                             "mixed precision); PyTorch stays float32")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "PyTorch's device, e.g. 'cuda'")
_WORKER = flags.DEFINE_string("worker", "", "internal: run one framework:model and print JSON")


def _sizes(model):
  image_size, batch, classes = SIZES[model]
  return _IMAGE_SIZE.value or image_size, _BATCH.value or batch, classes


def _time_steps(run, steps, warmup, synchronize=lambda: None):
  """Median and all per-step wall times (s) of run(), which must block until done (or be
  followed by `synchronize`, e.g. torch.cuda.synchronize)."""
  times = []
  for _ in range(warmup + steps):
    start = time.perf_counter()
    run()
    synchronize()
    times.append(time.perf_counter() - start)
  timed = times[warmup:]
  return {"median_s": statistics.median(timed), "min_s": min(timed), "max_s": max(timed)}


def _maxrss_mib():
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- JAX ---------------------------------------------------------------------------

def jax_config(model_name, blocks_per_stage=0, dtype="float32"):
  """The recipe's config with kurtosis, WDM and distillation on."""
  from bmd_jax.configs import cifar10, imagenet
  config = (cifar10 if model_name == "resnet20" else imagenet).get_config()
  config.model.name = model_name
  if blocks_per_stage:
    if model_name != "resnet20":
      raise ValueError("--blocks_per_stage applies to resnet20 only")
    config.model.stage_sizes = (blocks_per_stage,) * 3
  config.model.precision = "binary"  # step 2: binary student, binary_activations teacher
  config.model.dtype = dtype
  config.teacher_precision = "binary_activations"
  config.loss.kurtosis.weight = 1.0
  config.loss.wdm.weight = 1.0
  config.loss.kd.weight = 1.0
  return config


@contextlib.contextmanager
def _without_kurtosis():
  """train.train_step traced with L_K = 0 and no per-layer kurtosis: the CE-alone step."""
  import jax.numpy as jnp
  from bmd_jax.core import losses
  with mock.patch.object(losses, "kurtosis_loss", lambda *a, **k: (jnp.zeros(()), {})):
    yield


def jax_setup(model_name, image_size, batch_size, num_classes, seed=0, blocks_per_stage=0,
              dtype="float32"):
  """(config, model, teacher_model, state, teacher variables, batch, lr_fn)."""
  import jax
  import numpy as np
  from bmd_jax.training import train
  config = jax_config(model_name, blocks_per_stage, dtype)
  model = train.create_model(config, num_classes)
  teacher_model = train.create_model(config, num_classes, config.teacher_precision)
  shape = (image_size, image_size, 3)
  lr_fn = train.create_learning_rate_fn(config, 1000)
  state = train.create_train_state(jax.random.PRNGKey(seed), config, model, shape, lr_fn)
  t_params, t_stats = train.initialized(jax.random.PRNGKey(seed + 1), teacher_model, shape)
  rng = np.random.default_rng(seed)
  batch = {"image": rng.standard_normal((batch_size, *shape), np.float32),
           "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
           "mask": np.ones(batch_size, bool)}
  return (config, model, teacher_model, state, {"params": t_params, "batch_stats": t_stats},
          jax.device_put(batch), lr_fn)


def jax_runners(model_name, variants=VARIANTS, image_size=None, batch_size=None,
                blocks_per_stage=0, dtype="float32"):
  """{variant: (run, compile seconds, compiled)}: `run()` takes one synchronized step of the
  bmd_jax variant, compiled beforehand from scratch."""
  import jax
  import jax.numpy as jnp
  from bmd_jax.xla_cpu import cpu_barriers
  from bmd_jax.training import evaluation, train
  default_size, default_batch, classes = SIZES[model_name]
  image_size, batch_size = image_size or default_size, batch_size or default_batch
  config, _, teacher_model, state, teacher, batch, lr_fn = jax_setup(
      model_name, image_size, batch_size, classes, blocks_per_stage=blocks_per_stage,
      dtype=dtype)
  step = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                           steps_per_epoch=1000, total_epochs=config.num_epochs,
                           teacher_apply=teacher_model.apply)
  est = train.estimator_args(config, 0.0)
  runners = {}
  for variant in variants:
    jax.clear_caches()  # every variant traced and compiled from scratch
    fresh = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)
    start = time.perf_counter()
    if variant in ("full", "ce_kurt", "ce"):
      t = teacher if variant == "full" else None
      with _without_kurtosis() if variant == "ce" else contextlib.nullcontext():
        lowered = jax.jit(lambda s, b, t: step(s, b, t), donate_argnums=(0,)).lower(
            fresh, batch, t)
      compiled = lowered.compile(cpu_barriers.compile_options(lowered))  # as train.py does
      box = [fresh]

      def run(compiled=compiled, t=t, box=box):
        box[0], metrics = compiled(box[0], batch, t)
        jax.block_until_ready((box[0], metrics))
    elif variant == "teacher":
      compiled = jax.jit(lambda v, x: teacher_model.apply(
          v, x, train=False, estimator_args=est)).lower(teacher, batch["image"]).compile()
      run = lambda compiled=compiled: compiled(teacher, batch["image"]).block_until_ready()
    elif variant == "eval":
      compiled = jax.jit(functools.partial(evaluation.eval_step, config=config)).lower(
          fresh, batch).compile()
      run = lambda compiled=compiled, fresh=fresh: jax.block_until_ready(compiled(fresh, batch))
    else:
      raise ValueError(f"unknown variant {variant!r}; choose among {VARIANTS}")
    runners[variant] = (run, time.perf_counter() - start, compiled)
  return runners


def run_jax(model_name, variants=VARIANTS, steps=20, warmup=3, image_size=None, batch_size=None,
            blocks_per_stage=0, dtype="float32"):
  """{variant: {median_s, min_s, max_s, compile_s, xla_temp_mib}} of the bmd_jax steps."""
  results = {}
  runners = jax_runners(model_name, variants, image_size, batch_size, blocks_per_stage, dtype)
  for variant, (run, compile_s, compiled) in runners.items():
    results[variant] = {**_time_steps(run, steps, warmup), "compile_s": compile_s}
    memory = compiled.memory_analysis()
    if memory is not None:
      results[variant]["xla_temp_mib"] = memory.temp_size_in_bytes / 2**20
  return results


def torch_models(model_name, num_classes, blocks_per_stage=0):
  """(student, teacher, config) twins of jax_config's models, PyTorch's default init."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference as ref
  config = jax_config(model_name, blocks_per_stage)
  fields = {k: v for k, v in dict(config.model).items() if k != "name"}
  student = ref.build(model_name, num_classes=num_classes, **fields)
  teacher = ref.build(model_name, num_classes=num_classes,
                      **{**fields, "precision": config.teacher_precision})
  teacher.eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  return student, teacher, config


def run_torch(model_name, variants=VARIANTS, steps=20, warmup=3, image_size=None,
              batch_size=None, blocks_per_stage=0, device="cpu"):
  """{variant: {median_s, min_s, max_s}} of the PyTorch eager twin on `device`."""
  import torch
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference as ref
  torch.manual_seed(0)
  default_size, default_batch, classes = SIZES[model_name]
  image_size, batch_size = image_size or default_size, batch_size or default_batch
  student, teacher, config = torch_models(model_name, classes, blocks_per_stage)
  student, teacher = student.to(device), teacher.to(device)
  images = torch.randn(batch_size, 3, image_size, image_size, device=device)
  labels = torch.randint(0, classes, (batch_size,), device=device)
  synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
  optimizer = ref.make_optimizer(student, config.optimizer, config.learning_rate,
                                 config.momentum, config.weight_decay,
                                 config.weight_decay_kernels_only)
  est = ref.default_estimator_args(0.0)
  ref.set_estimator_args(student, est)
  ref.set_estimator_args(teacher, est)
  loss_kwargs = {"kurtosis_target": config.loss.kurtosis.target,
                 "wdm_temperature": config.loss.wdm.temperature,
                 "wdm_reduction": config.loss.wdm.reduction,
                 "kurtosis_view": config.loss.kurtosis.view}
  results = {}
  for variant in variants:
    if variant in ("full", "ce_kurt", "ce"):
      run = functools.partial(
          ref.train_step, student, optimizer, images, labels,
          teacher if variant == "full" else None,
          kurtosis_weight=0.0 if variant == "ce" else 1.0, **loss_kwargs)
    elif variant == "teacher":
      run = functools.partial(ref.eval_step, teacher, images, labels)
    elif variant == "eval":
      run = functools.partial(ref.eval_step, student, images, labels)
    else:
      raise ValueError(f"unknown variant {variant!r}; choose among {VARIANTS}")
    results[variant] = _time_steps(run, steps, warmup, synchronize)
  return results


# --- driver ----------------------------------------------------------------------------

def worker(spec, steps, warmup):
  framework, model_name = spec.split(":")
  image_size, batch_size, _ = _sizes(model_name)
  if framework == "torch":
    results = run_torch(model_name, _VARIANTS.value, steps, warmup, image_size, batch_size,
                        _BLOCKS.value, _TORCH_DEVICE.value)
  else:
    results = run_jax(model_name, _VARIANTS.value, steps, warmup, image_size, batch_size,
                      _BLOCKS.value, _DTYPE.value)
  out = {"framework": framework, "model": model_name, "image_size": image_size,
         "batch": batch_size, "variants": results, "maxrss_mib": _maxrss_mib()}
  print("RESULT " + json.dumps(out), flush=True)


def _child_env(framework="jax"):
  env = dict(os.environ)
  if framework == "jax_xla_defaults":
    env["BMD_JAX_CPU_FLAGS"] = "off"
  if _MALLOC.value == "tuned":
    env["GLIBC_TUNABLES"] = TUNED_MALLOC
  elif _MALLOC.value == "default":
    env.pop("GLIBC_TUNABLES", None)
  return env


def _spawn(spec, steps, warmup):
  args = [sys.executable, os.path.abspath(__file__), f"--worker={spec}",
          f"--steps={steps}", f"--warmup={warmup}", f"--variants={','.join(_VARIANTS.value)}",
          f"--batch={_BATCH.value}", f"--image_size={_IMAGE_SIZE.value}",
          f"--blocks_per_stage={_BLOCKS.value}", f"--dtype={_DTYPE.value}",
          f"--torch_device={_TORCH_DEVICE.value}"]
  proc = subprocess.run(args, env=_child_env(spec.split(":")[0]), capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def _environment():
  from importlib import metadata
  info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor()}",
          "load_average": os.getloadavg(), "jax": metadata.version("jax"), "flax": metadata.version("flax"),
          "GLIBC_TUNABLES": _child_env().get("GLIBC_TUNABLES", "(unset)"),
          "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}
  try:
    info["torch"] = metadata.version("torch")
  except metadata.PackageNotFoundError:
    info["torch"] = "(not installed)"
  return info


def _merge(runs):
  """Rounds of one framework:model -> per variant the median of the rounds' medians."""
  first = runs[0]
  merged = {k: v for k, v in first.items() if k != "variants"}
  merged["maxrss_mib"] = max(r["maxrss_mib"] for r in runs)
  merged["variants"] = {}
  for variant in first["variants"]:
    rows = [r["variants"][variant] for r in runs]
    merged["variants"][variant] = {
        k: statistics.median(row[k] for row in rows) for k in rows[0]}
  return merged


def report(env, results):
  lines = [f"# {env['date']}  {env['machine']}  load average {env['load_average']}",
           f"# jax {env['jax']}, flax {env['flax']}, torch {env['torch']}, "
           f"GLIBC_TUNABLES={env['GLIBC_TUNABLES']}",
           f"# command: {env['command']}", ""]
  for model_name, by_fw in results.items():
    r0 = next(iter(by_fw.values()))
    lines.append(f"## {model_name}, {r0['image_size']}x{r0['image_size']}, "
                 f"batch {r0['batch']}")
    ratios = [(a, b) for a, b in RATIOS if a in by_fw and b in by_fw]
    lines.append("| variant | " + " | ".join(f"{fw} img/s (ms)" for fw in by_fw)
                 + "".join(f" | {a} / {b}" for a, b in ratios) + " |")
    lines.append("|---" * (len(by_fw) + 1 + len(ratios)) + "|")
    for variant in r0["variants"]:
      cells, rates = [], {}
      for fw, r in by_fw.items():
        v = r["variants"][variant]
        rates[fw] = r["batch"] / v["median_s"]
        extra = f", compile {v['compile_s']:.1f} s" if "compile_s" in v else ""
        cells.append(f"{rates[fw]:.0f} ({1e3 * v['median_s']:.1f}{extra})")
      lines.append(f"| {variant} | " + " | ".join(cells)
                   + "".join(f" | {rates[a] / rates[b]:.2f}x" for a, b in ratios) + " |")
    for fw, r in by_fw.items():
      v = r["variants"]
      notes = [f"peak RSS {r['maxrss_mib']:.0f} MiB"]
      if "xla_temp_mib" in v.get("full", {}):
        notes.append(f"XLA temp buffers of the full step {v['full']['xla_temp_mib']:.0f} MiB")
      if {"full", "teacher", "ce"} <= set(v):
        extra = v["full"]["median_s"] - v["teacher"]["median_s"] - v["ce"]["median_s"]
        notes.append(f"regularizers (full - teacher - ce) add {100 * extra / v['ce']['median_s']:+.0f}%"
                     f" to ce; teacher forward {100 * v['teacher']['median_s'] / v['ce']['median_s']:.0f}%")
      if {"ce_kurt", "ce"} <= set(v):
        notes.append(f"kurtosis alone {100 * (v['ce_kurt']['median_s'] / v['ce']['median_s'] - 1):+.0f}%")
      lines.append(f"- {fw}: " + "; ".join(notes))
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  bmd_jax.configure_cpu()  # before any JAX computation; BMD_JAX_CPU_FLAGS=off skips it
  steps, warmup = (5, 2) if _QUICK.value else (_STEPS.value, _WARMUP.value)
  if _WORKER.value:
    worker(_WORKER.value, steps, warmup)
    return
  env = _environment()
  if env["torch"] == "(not installed)" and "torch" in _FRAMEWORKS.value:
    print("torch is not installed (pip install -e .[bench]); timing JAX only", file=sys.stderr)
    _FRAMEWORKS.value.remove("torch")
  unknown = sorted(set(_FRAMEWORKS.value) - set(FRAMEWORKS))
  if unknown:
    raise app.UsageError(f"unknown frameworks {unknown}; choose among {FRAMEWORKS}")
  results = {}
  for model_name in _MODELS.value:
    if model_name not in SIZES:
      raise app.UsageError(f"unknown model {model_name!r}; choose among {sorted(SIZES)}")
    runs = {fw: [] for fw in _FRAMEWORKS.value}
    for _ in range(_ROUNDS.value):
      for fw in _FRAMEWORKS.value:
        runs[fw].append(_spawn(f"{fw}:{model_name}", steps, warmup))
        print(f"{fw}:{model_name} done: " + json.dumps(runs[fw][-1]), file=sys.stderr,
              flush=True)
    results[model_name] = {fw: _merge(r) for fw, r in runs.items()}
  env["load_average_after"] = os.getloadavg()
  text = report(env, results)
  print(text)
  print(f"# load average after: {env['load_average_after']}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
