"""Binary ResNet-20 on CIFAR-10, BD-BNN's two steps and the plain binary baseline, up to a stop
time that a later window continues from (bench/gpu_run.sh runs it).

    python bench/gpu_train.py --data_dir=/tmp/cifar10-jpeg --runs_dir=/tmp/runs \
        --epochs=50 --seeds=0,1 --stop_at=$(( $(date +%s) + 240 )) \
        --manifests=bench/gpu_payload/manifest.json --records=/tmp/out/records.json

    python bench/gpu_train.py --data_dir=/tmp/cifar10-jpeg --runs_dir=/tmp/runs \
        --group=wave1,seeds=0-1 --epochs=25 --stop_at=...      # 14 runs in one program

With --group, one run group of issue 27's experiment (the recipe cifar10_experiment with that
argument; docs/EXPERIMENT.md) trains side by side in one program, in --runs_dir/<group>/<run>/,
up to the stop time; the next window resumes the group where it stopped.

Otherwise each run (variant x seed) is the recipe cifar10 or cifar10_baseline with the
device input path, `--epochs` epochs a step, in its own workdir under --runs_dir. The runs
share one decoded copy of the data and take turns: each gets the time left (to --stop_at and
within --budget_s) divided by the runs left, as its config.stop_at_time: the train loop saves at
the last dispatch boundary before it and raises train.Preempted; the next window, given the same
flags and the returned workdirs, resumes every run exactly where it stopped (the device path's
batches depend on the step alone).

Before anything is loaded, each planned run is checked against --manifests (what the last
window returned: bench/gpu_run.sh writes manifest.json beside its archives): a run whose
manifest expects a finished checkpoint that is not in --runs_dir is refused in one line, since
starting it from scratch would silently throw away windows of work (2026-11-27's window 2 did).
--restart_from_scratch allows it on purpose.

Checkpoints follow the loop's policy (every --checkpoint_every_epochs epochs and every
--checkpoint_every_minutes minutes, at each stage's end and at the stop time; none at plain
epoch ends); evaluation runs every --eval_every_epochs epoch(s) at 'highest' precision on
whatever test split the data folder has (bench/gpu_run.sh carries the whole split: learning
curves, the final and the best epoch; bench/evaluate_runs.py recomputes a run's final top-1
from its returned checkpoint on any one device).

--records gets one docs/results-style record per run (model, variant, seed, epochs_per_step,
top1 and its eval_examples, the best top-1 and its epoch, device, wall_seconds summed over
windows, command, date), and the progress of the unfinished ones.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import window_archives  # bench/, beside this file  # pylint: disable=g-import-not-at-top

# bmd_jax (and so jax) is imported in main(), after the manifest check: a refused window says
# so in its first seconds, not after the imports and the data.

VARIANTS = {"bd_bnn": "cifar10.py", "plain_binary": "cifar10_baseline.py"}

_DATA = flags.DEFINE_string("data_dir", None, "CIFAR-10 image folder (train/, test/)")
_RUNS = flags.DEFINE_string("runs_dir", None, "one workdir per run; kept across windows")
_EPOCHS = flags.DEFINE_float(
    "epochs", 400.0, "epochs of each step (the recipe: 400); 0: the longest schedule that "
    "every run finishes within the time given, from --step_seconds")
_STEP_SECONDS = flags.DEFINE_float(
    "step_seconds", 0.0, "with --epochs=0: one BD-BNN train step's time on this device, as "
    "bench/train_step.py measured it (its 'full' variant)")
_FIXED_SECONDS = flags.DEFINE_float(
    "fixed_seconds_per_run", 40.0, "with --epochs=0: a run's cost besides its steps "
    "(compiling four programs, loading the teacher: ~25 s on an H200 with 100 test images; "
    "evaluating the whole split every epoch adds a few seconds, not yet measured)")
_GROUP = flags.DEFINE_string(
    "group", "", "instead of --variants and --seeds: one run group of issue 27's experiment, "
    "its runs trained side by side in one program: the argument of the recipe "
    "cifar10_experiment, e.g. 'wave1,seeds=0-1' (docs/EXPERIMENT.md); its folder under "
    "--runs_dir is named by the wave and seeds, e.g. wave1_s0-1")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"among {sorted(VARIANTS)}")
_STOP_AT = flags.DEFINE_float(
    "stop_at", 0.0, "unix seconds: every run saves and stops at the last dispatch boundary "
    "before it (0: no stop time)")
_BUDGET = flags.DEFINE_float("budget_s", 0.0, "seconds of training from now, all runs (0: up "
                             "to --stop_at)")
_MANIFESTS = flags.DEFINE_list(
    "manifests", [], "manifest.json files of the windows this one continues (absent files are "
    "skipped): each run must find the finished checkpoints they list")
_RESTART = flags.DEFINE_bool("restart_from_scratch", False,
                             "start runs whose carried checkpoints are missing from scratch")
_CHECK_ONLY = flags.DEFINE_bool("check_only", False, "only check the manifests, then exit")
_DTYPE = flags.DEFINE_string("dtype", "float32", "config.model.dtype")
_RECORDS = flags.DEFINE_string("records", "", "write the runs' records (JSON list) here")
_STEPS = flags.DEFINE_integer("num_train_steps", -1, "override (dry runs): steps per stage")
_BATCH = flags.DEFINE_integer("batch_size", 128, "global batch size")
_EVAL_EVERY = flags.DEFINE_float("eval_every_epochs", 1.0, "epochs between evaluations")
_EVAL_BATCH = flags.DEFINE_integer(
    "eval_batch_size", 128, "evaluation batch (at most the eval split; the whole split is one "
    "program either way): at 128, eval/accuracy_drop_last covers IR-Net's 9,984 images")
_CKPT_EPOCHS = flags.DEFINE_float("checkpoint_every_epochs", 10.0, "0: off")
_CKPT_MINUTES = flags.DEFINE_float(
    "checkpoint_every_minutes", 2.0, "0: off; a window killed at any moment loses at most "
    "this much (gpu_run.sh returns each checkpoint as soon as it is finished)")
_BLOCKS = flags.DEFINE_integer("blocks_per_stage", 0, "dry runs: blocks per stage (0: 3)")


def run_name(variant: str, seed: int) -> str:
  return f"{variant}_seed{seed}"


def finished_step(runs_dir: str, run: str, stage: str) -> int:
  """The newest finished checkpoint's step of a run's stage (0: none)."""
  return window_archives.finished_steps(os.path.join(runs_dir, run)).get(stage, 0)


def run_config(variant: str, seed: int, epochs: float, eval_examples: int):
  from bmd_jax.infra.config_files import load_sibling
  config = load_sibling(os.path.join(REPO, "bmd_jax", "configs", "x.py"), VARIANTS[variant])
  config.seed = seed
  return window_settings(config, epochs, eval_examples)


def group_spec() -> str:
  """cifar10_experiment's argument: --group, with --blocks_per_stage (dry runs) added."""
  return _GROUP.value + (f",blocks={_BLOCKS.value}" if _BLOCKS.value else "")


def group_folder() -> str:
  """The group's folder under --runs_dir, named by what it trains (wave, seeds, blocks), so
  two spellings of one group ('wave1' and 'wave1,seeds=0-1') share it."""
  from bmd_jax.configs import cifar10_experiment
  wave, seeds, blocks = cifar10_experiment.parse(group_spec())
  span = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
  return f"{wave}_s{span}" + (f"_blocks{blocks}" if blocks != 3 else "")


def group_config(epochs: float, eval_examples: int):
  """The run group's config (config.runs lists its runs), with this window's settings."""
  from bmd_jax.infra import config_files
  return window_settings(config_files.load("cifar10_experiment", group_spec()), epochs,
                         eval_examples)


def window_settings(config, epochs: float, eval_examples: int):
  """The settings every run of a window shares, whatever its recipe."""
  config.dataset = "image_folder"
  config.data_dir = _DATA.value
  config.input_path = "device"
  config.model.dtype = _DTYPE.value
  if _BLOCKS.value:
    config.model.stage_sizes = (_BLOCKS.value,) * 3
  config.num_epochs = epochs
  config.num_train_steps = _STEPS.value
  config.batch_size = _BATCH.value
  config.eval_batch_size = max(1, min(_EVAL_BATCH.value, eval_examples))
  config.eval_every_epochs = _EVAL_EVERY.value
  config.eval_precision = "highest"
  config.log_every_steps = 100
  config.steps_per_dispatch = 0  # up to the next log, evaluation or save, on the GPU
  config.checkpoint_every_epochs = _CKPT_EPOCHS.value
  config.checkpoint_every_minutes = _CKPT_MINUTES.value
  config.checkpoint_every_steps = 0  # off: by epochs and minutes (loop_schedule.py)
  config.checkpoint_keep = 1  # what returns from a window stays small
  return config


def _wall_file(workdir):
  return os.path.join(workdir, "wall_seconds.json")


def _add_wall_seconds(workdir, seconds):
  path = _wall_file(workdir)
  total = json.load(open(path))["wall_seconds"] if os.path.exists(path) else 0.0
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"wall_seconds": total + seconds}, f)
  return total + seconds


# Time a step takes inside the loop over the benchmark's: measured on an H200 (2026-11-27),
# 1.9x in step 1 and 2.4x in BD-BNN's step 2, with a step a dispatch and a save every epoch.
# Kept until a window measures the loop with an epoch a dispatch (issue 26).
LOOP_SLACK = 2.2


def fitted_epochs(budget_s, runs, step_seconds, steps_per_epoch, fixed_seconds):
  """The longest whole-epoch schedule (the same for both steps and every run) that all runs
  finish within the budget: each run's share, less its fixed cost, over two steps' epochs at
  the benchmark's step time (the BD-BNN step with its teacher, an upper bound for step 1 and
  the plain baseline). At least 1."""
  per_run = budget_s / runs - fixed_seconds
  epoch_seconds = steps_per_epoch * step_seconds * LOOP_SLACK
  return max(1, int(per_run / (2 * epoch_seconds)))


def deadline(start: float) -> float:
  """Unix seconds at which all runs stop: --stop_at and start + --budget_s, the earlier;
  0: none."""
  ends = [t for t in (_STOP_AT.value, start + _BUDGET.value if _BUDGET.value > 0 else 0) if t]
  return min(ends) if ends else 0.0


def run_record(name: str, config, results: dict | None, wall: float, device: str, epochs: float,
               eval_examples: int) -> dict:
  """One run's record: its final figures when its last stage finished (`results`, as
  train.train_and_evaluate returns them), else its finished steps so far."""
  from bmd_jax.training import stages
  stage_names = [stage.name for stage in stages.stage_list(config)]
  variant = re.sub(r"_s(eed)?\d+$", "", name.rsplit("/", 1)[-1])
  record = {"model": config.model.name, "run": name, "variant": variant, "seed": config.seed,
            "epochs_per_step": [epochs] * len(stage_names), "device": device,
            "wall_seconds": round(wall, 1), "dtype": _DTYPE.value, "input_path": "device",
            "batch_size": config.batch_size,
            "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if not results or stage_names[-1] not in results:
    record["complete"] = False
    record["steps_done"] = {s: finished_step(_RUNS.value, name, s) for s in stage_names}
    return record
  final = results[stage_names[-1]]["eval"]
  record.update(complete=True, top1=final["eval/accuracy"],
                best_top1=final["eval/best_accuracy"], best_epoch=final["eval/best_epoch"],
                top1_drop_last=final.get("eval/accuracy_drop_last"),
                eval_examples=eval_examples, eval_precision="highest")
  if "step1" in results and stage_names[-1] != "step1":
    record["top1_step1"] = results["step1"]["eval"]["eval/accuracy"]
  return record


def planned_runs() -> list[str]:
  """The run folders this window trains, relative to --runs_dir."""
  if _GROUP.value:
    from bmd_jax.training import run_group_config
    return [f"{group_folder()}/{name}"
            for name in run_group_config.run_configs(group_config(1.0, 1))]
  unknown = sorted(set(_VARIANTS.value) - set(VARIANTS))
  if unknown:
    sys.exit(f"gpu_train.py: unknown variants {unknown}; choose among {sorted(VARIANTS)}")
  return [run_name(v, int(s)) for s in _SEEDS.value for v in _VARIANTS.value]


def train_group(datasets, schedule: float, epochs: float, stop_at: float, device: str):
  """The run group in one program, up to the stop time; its runs' records."""
  from bmd_jax.training import run_group_config, train
  config = group_config(schedule, datasets.info.num_eval)
  config.stop_at_time = stop_at
  folder = os.path.join(_RUNS.value, group_folder())
  began, results = time.time(), {}
  try:
    results = train.train_and_evaluate(config, folder, datasets)
  except train.Preempted as e:
    print(f"{group_folder()}: {e}", flush=True)
  wall = _add_wall_seconds(folder, time.time() - began)
  return [run_record(f"{group_folder()}/{name}", run, results.get(name), wall, device, epochs,
                     datasets.info.num_eval)
          for name, run in run_group_config.run_configs(config).items()]


def train_one_by_one(datasets, schedule: float, epochs: float, stop_at: float, device: str):
  """The variants x seeds, each its own program in turn, up to the stop time; their records."""
  from bmd_jax.training import train
  runs = [(v, int(s)) for s in _SEEDS.value for v in _VARIANTS.value]
  records, sigterm = [], False
  for i, (variant, seed) in enumerate(runs):
    config = run_config(variant, seed, schedule, datasets.info.num_eval)
    name = run_name(variant, seed)
    workdir = os.path.join(_RUNS.value, name)
    # Each run gets an equal share of the time left, so a later run is not starved.
    share = (stop_at - time.time()) / (len(runs) - i) if stop_at else float("inf")
    config.stop_at_time = time.time() + share if stop_at else 0.0
    began = time.time()
    results = {}
    if share > 0 and not sigterm:
      try:
        results = train.train_and_evaluate(config, workdir, datasets)
      except train.Preempted as e:
        print(f"{name}: {e}", flush=True)
        # A SIGTERM from outside (the machine going back) ends the window; a run's own stop
        # time passes the turn to the next run.
        sigterm = str(e).startswith("SIGTERM")
    wall = _add_wall_seconds(workdir, time.time() - began) if share > 0 else 0.0
    records.append(run_record(name, config, results, wall, device, epochs,
                              datasets.info.num_eval))
  return records


def main(argv):
  del argv
  start = time.time()
  runs = planned_runs()
  if not _RESTART.value:
    problem = window_archives.missing_checkpoints(_MANIFESTS.value, _RUNS.value, runs)
    if problem:
      sys.exit(f"gpu_train.py: refused: {problem}")
  if _CHECK_ONLY.value:
    return

  import jax
  from bmd_jax.training import input_pipeline, metric_writers
  metric_writers.console_logging()
  # Seeds of a variant compile the same programs: compile once per window. A cache the caller
  # set (bench/gpu_run.sh's, carried between windows; the test session's) wins.
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(_RUNS.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  datasets = input_pipeline.create_datasets(run_config("bd_bnn", 0, 1.0, 1))
  device = jax.devices()[0].device_kind
  stop_at = deadline(start)
  epochs = _EPOCHS.value  # or, where --num_train_steps overrides it (dry runs), what that is
  if epochs <= 0:
    steps_per_epoch = datasets.info.num_train // _BATCH.value
    if _GROUP.value or _STEP_SECONDS.value <= 0 or not stop_at:
      raise app.UsageError("--epochs=0 fits the schedule of runs trained one by one to the "
                           "time left and needs --step_seconds (bench/train_step.py's 'full' "
                           "median_s) and --stop_at or --budget_s; a --group needs --epochs N")
    epochs = fitted_epochs(stop_at - time.time(), len(runs), _STEP_SECONDS.value,
                           steps_per_epoch, _FIXED_SECONDS.value)
    print(f"fitted schedule: {epochs} epochs a step for {len(runs)} runs in "
          f"{stop_at - time.time():.0f} s ({_STEP_SECONDS.value * 1e3:.2f} ms a step, "
          f"{steps_per_epoch} steps an epoch)", flush=True)
  schedule = epochs
  if _STEPS.value > 0:
    epochs = _STEPS.value / (datasets.info.num_train // _BATCH.value)
  train_runs = train_group if _GROUP.value else train_one_by_one
  records = train_runs(datasets, schedule, epochs, stop_at, device)
  for record in records:
    print(json.dumps(record), flush=True)
  if _RECORDS.value:
    with open(_RECORDS.value, "w") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["data_dir", "runs_dir"])
  app.run(main)
