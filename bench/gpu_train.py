"""Binary ResNet-20 on CIFAR-10, BD-BNN's two steps and the plain binary baseline, within a
time budget that a later window continues (bench/gpu_run.sh runs it).

    python bench/gpu_train.py --data_dir=/tmp/cifar10-jpeg --runs_dir=/tmp/runs \
        --epochs=50 --seeds=0,1 --budget_s=240 --records=/tmp/out/records.json

Each run (variant x seed) is configs/cifar10.py or configs/cifar10_baseline.py with the
device input path, `--epochs` epochs a step, in its own workdir under --runs_dir. The runs
share one decoded copy of the data and take turns: each gets the budget left divided by the
runs left. When its share is spent, a SIGTERM makes the train loop save a checkpoint and stop
(train.Preempted); the next window, given the same flags and the returned workdirs, resumes
every run exactly where it stopped (the device path's batches depend on the step alone).

--records gets one docs/results-style record per finished run (model, variant, seed,
epochs_per_step, top1 over the 10,000 test images, device, wall_seconds summed over windows,
command, date), and the progress of the unfinished ones.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import threading
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bmd_jax import checkpoint, input_pipeline, metric_writers, train  # noqa: E402
from bmd_jax.config_files import load_sibling  # noqa: E402

VARIANTS = {"bd_bnn": "cifar10.py", "plain_binary": "cifar10_baseline.py"}

_DATA = flags.DEFINE_string("data_dir", None, "CIFAR-10 image folder (train/, test/)")
_RUNS = flags.DEFINE_string("runs_dir", None, "one workdir per run; kept across windows")
_EPOCHS = flags.DEFINE_float(
    "epochs", 400.0, "epochs of each step (the recipe: 400); 0: the longest schedule that "
    "every run finishes within --budget_s, from --step_seconds")
_STEP_SECONDS = flags.DEFINE_float(
    "step_seconds", 0.0, "with --epochs=0: one BD-BNN train step's time on this device, as "
    "bench/train_step.py measured it (its 'full' variant)")
_FIXED_SECONDS = flags.DEFINE_float(
    "fixed_seconds_per_run", 30.0, "with --epochs=0: a run's cost besides its steps "
    "(compiling four programs, evaluations, loading the teacher: ~25 s on an H200)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"among {sorted(VARIANTS)}")
_BUDGET = flags.DEFINE_float("budget_s", 240.0, "seconds of training in this window, all runs")
_DTYPE = flags.DEFINE_string("dtype", "float32", "config.model.dtype")
_RECORDS = flags.DEFINE_string("records", "", "write the runs' records (JSON list) here")
_STEPS = flags.DEFINE_integer("num_train_steps", -1, "override (dry runs): steps per stage")
_BATCH = flags.DEFINE_integer("batch_size", 128, "global batch size")
_EVAL_EVERY = flags.DEFINE_float("eval_every_epochs", 25.0, "epochs between evaluations")
_BLOCKS = flags.DEFINE_integer("blocks_per_stage", 0, "dry runs: blocks per stage (0: 3)")


def run_config(variant: str, seed: int, epochs: float):
  config = load_sibling(os.path.join(REPO, "configs", "x.py"), VARIANTS[variant])
  config.dataset = "image_folder"
  config.data_dir = _DATA.value
  config.input_path = "device"
  config.model.dtype = _DTYPE.value
  if _BLOCKS.value:
    config.model.stage_sizes = (_BLOCKS.value,) * 3
  config.seed = seed
  config.num_epochs = epochs
  config.num_train_steps = _STEPS.value
  config.batch_size = _BATCH.value
  config.eval_batch_size = 250 if _BATCH.value >= 250 else _BATCH.value  # 10,000 = 40 x 250
  config.eval_every_epochs = _EVAL_EVERY.value
  config.log_every_steps = 100
  config.checkpoint_every_steps = 10**9  # at epoch ends (and on SIGTERM) only
  config.checkpoint_keep = 1  # what returns from a window stays small
  return config


class Deadline:
  """SIGTERMs this process every second from `seconds` on, until cancelled: the train loop
  saves and raises train.Preempted at its next step; between stages the signal is ignored."""

  def __init__(self, seconds: float):
    self._stop = threading.Event()
    self._seconds = seconds
    self.fired = False
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    if self._stop.wait(self._seconds):
      return
    self.fired = True
    while not self._stop.is_set():
      os.kill(os.getpid(), signal.SIGTERM)
      self._stop.wait(1.0)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def _wall_file(workdir):
  return os.path.join(workdir, "wall_seconds.json")


def _add_wall_seconds(workdir, seconds):
  path = _wall_file(workdir)
  total = json.load(open(path))["wall_seconds"] if os.path.exists(path) else 0.0
  with open(path, "w") as f:
    json.dump({"wall_seconds": total + seconds}, f)
  return total + seconds


def _stage_steps(workdir, stage):
  manager = checkpoint.create_manager(workdir, stage, 1)
  step = manager.latest_step()
  manager.close()
  return step or 0


# Time a step takes inside the loop (dispatch, metrics, epoch-end saves) over the benchmark's:
# measured on an H200 (2026-11-27), 1.9x in step 1 and 2.4x in BD-BNN's step 2.
LOOP_SLACK = 2.2


def fitted_epochs(budget_s, runs, step_seconds, steps_per_epoch, fixed_seconds):
  """The longest whole-epoch schedule (the same for both steps and every run) that all runs
  finish within the budget: each run's share, less its fixed cost, over two steps' epochs at
  the benchmark's step time (the BD-BNN step with its teacher, an upper bound for step 1 and
  the plain baseline). At least 1."""
  per_run = budget_s / runs - fixed_seconds
  epoch_seconds = steps_per_epoch * step_seconds * LOOP_SLACK
  return max(1, int(per_run / (2 * epoch_seconds)))


def main(argv):
  del argv
  import jax
  metric_writers.console_logging()
  signal.signal(signal.SIGTERM, lambda *_: None)  # a late deadline signal between stages
  # Seeds of a variant compile the same programs: compile once per window. A cache the caller
  # set (bench/gpu_run.sh's, the test session's) wins: windows and runs then share it.
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(_RUNS.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  runs = [(v, int(s)) for s in _SEEDS.value for v in _VARIANTS.value]
  datasets = input_pipeline.create_datasets(run_config(runs[0][0], runs[0][1], 1.0))
  device = jax.devices()[0].device_kind
  epochs = _EPOCHS.value  # or, where --num_train_steps overrides it (dry runs), what that is
  if epochs <= 0:
    steps_per_epoch = datasets.info.num_train // _BATCH.value
    if _STEP_SECONDS.value <= 0:
      raise app.UsageError("--epochs=0 fits the schedule to the budget and needs "
                           "--step_seconds (bench/train_step.py's 'full' median_s)")
    epochs = fitted_epochs(_BUDGET.value, len(runs), _STEP_SECONDS.value, steps_per_epoch,
                           _FIXED_SECONDS.value)
    print(f"fitted schedule: {epochs} epochs a step for {len(runs)} runs in "
          f"{_BUDGET.value:.0f} s ({_STEP_SECONDS.value * 1e3:.2f} ms a step, "
          f"{steps_per_epoch} steps an epoch)", flush=True)
  schedule = epochs
  if _STEPS.value > 0:
    epochs = _STEPS.value / (datasets.info.num_train // _BATCH.value)
  start = time.time()
  records = []
  for i, (variant, seed) in enumerate(runs):
    config = run_config(variant, seed, schedule)
    workdir = os.path.join(_RUNS.value, f"{variant}_seed{seed}")
    share = (_BUDGET.value - (time.time() - start)) / (len(runs) - i)
    began = time.time()
    results, stopped = {}, False
    if share > 0:
      with Deadline(share):
        try:
          results = train.train_and_evaluate(config, workdir, datasets)
        except train.Preempted:
          stopped = True
    else:
      stopped = True
    wall = _add_wall_seconds(workdir, time.time() - began) if share > 0 else 0.0
    record = {"model": config.model.name, "variant": variant, "seed": seed,
              "epochs_per_step": [epochs, epochs], "device": device,
              "wall_seconds": round(wall, 1), "dtype": _DTYPE.value,
              "input_path": "device", "batch_size": config.batch_size,
              "command": " ".join(["python", *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if stopped or "step2" not in results:
      record["complete"] = False
      record["steps_done"] = {s: _stage_steps(workdir, s) for s in ("step1", "step2")}
    else:
      record["complete"] = True
      record["top1"] = results["step2"]["eval"]["eval/accuracy"]
      record["top1_step1"] = results["step1"]["eval"]["eval/accuracy"]
    print(json.dumps(record), flush=True)
    records.append(record)
  if _RECORDS.value:
    with open(_RECORDS.value, "w") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["data_dir", "runs_dir"])
  app.run(main)
