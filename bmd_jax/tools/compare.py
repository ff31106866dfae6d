"""Compares training runs over seeds: per variant, the mean and standard deviation of top-1;
against a baseline variant, the difference of means with a 95% Welch interval.

    python -m bmd_jax.tools.compare runs/plain_seed0 ... runs/bd_bnn_seed5 --baseline=plain
    python -m bmd_jax.tools.compare runs/* --group_by=loss.kurtosis.target --json=table.json

Each RUN_DIR is a training run's workdir: its ``config.json`` and ``metrics.jsonl``. The stage
compared is the last of each run's ``config.stages`` (step 2 in the two-step recipes), or
``--stage``. A run whose stage did not reach its last step is refused (a partial run would
pull its variant's mean down), unless ``--allow_unfinished``.

Variants. By default a run's variant is its folder's name without a trailing seed suffix
(``bdbnn_seed3``, ``bdbnn-seed3``, ``bdbnn.seed3`` and a run group's ``bdbnn_s3`` are variant
``bdbnn``; a name without one is its own variant). ``--variant_pattern=REGEX`` takes the variant from the folder name
instead: the regex's group ``variant`` (or its first group, or its whole match) where it first
matches. ``--group_by=FIELD[,FIELD...]`` groups by the stage's config fields instead (dotted
names, e.g. ``loss.kurtosis.target``): the variant is ``field=value ...``. The baseline is
``--baseline`` or the first run's variant.

The figures, in percent, per run and stage (metrics.jsonl's evaluation records):

- ``final``: ``eval/accuracy`` at the stage's last evaluation (every test image);
- ``best``: ``eval/best_accuracy`` there, the best evaluation of the stage (its epoch is
  ``eval/best_epoch``), as the BD-BNN and IR-Net papers report;
- ``final_drop_last`` and ``best_drop_last``: ``eval/accuracy_drop_last`` (the top-1 over the
  full eval batches only: IR-Net's 9,984 of CIFAR-10's 10,000 at eval batch 128 or 256) at the
  last evaluation, and its highest over the stage's evaluations (IR-Net picks its best epoch
  by that figure). The table names how many images it covers (``eval/examples_drop_last``):
  at an eval batch that divides the split it is every image. Runs written before the figure
  existed leave it out.

Per variant and figure: n, mean and sample standard deviation; per variant but the baseline,
its mean minus the baseline's with the 95% Welch interval (welch.py); a variant or baseline of
one run gives no interval, and the table says so. ``--goal_half_width=0.7`` adds, per
difference, the runs per variant that would give an interval of +-0.7 points at the measured
standard deviations (welch.seeds_for_half_width): how many seeds to add. ``--json=PATH`` writes the
same as JSON, with every run's figures (``--json=-``: to stdout, in place of the table).

A comparison's runs train on one device type at one precision: runs whose last start was on
another device kind (run_info.json, rewritten at each start) or whose model has another dtype
are named in a NOT LIKE FOR LIKE line above the table.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import sys
from typing import Sequence

from absl import app, flags

from bmd_jax.infra import cli, paths
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.tools import welch

SEED_SUFFIX = r"^(?P<variant>.+?)[-_.](?:seed[-_=]?|s)\d+$"

# (key, what it is): the figures, in the order the table gives them.
FIGURES = (
    ("final", "the stage's last evaluation, every test image"),
    ("best", "the stage's best evaluation, every test image"),
    ("final_drop_last", "the last evaluation, full eval batches only (IR-Net's drop_last)"),
    ("best_drop_last", "the best evaluation, full eval batches only (IR-Net's drop_last)"),
)


class RunFolderError(ConfigValueError):
  """A run folder that cannot be compared (no record, no evaluation, unfinished), or a
  grouping that does not fit the runs; the message names it and the fix. A ConfigValueError
  so that cli's error boundary prints it in one line."""


@dataclasses.dataclass(frozen=True)
class Run:
  folder: str
  variant: str
  stage: str
  figures: dict[str, float]  # percent, by FIGURES' keys (those the run has)
  best_epoch: float
  last_epoch: float
  drop_last_examples: int | None  # how many test images the drop_last figures cover
  trained_on: str  # run_info.json's device kind and the model's dtype, e.g. 'NVIDIA H200, float32'


# --- reading run folders -----------------------------------------------------------------

def _stage_config(config: dict, stage: str) -> dict:
  """The stage's config: the run's, with config.stage_overrides.<stage> applied (as
  training.stages does)."""
  def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
      out[key] = (merged(out[key], value) if isinstance(value, dict)
                  and isinstance(out.get(key), dict) else value)
    return out
  return merged(config, (config.get("stage_overrides") or {}).get(stage) or {})


def _read_json(path, folder: str):
  if not path.exists():
    raise RunFolderError(f"{folder} has no {path.name}: it is not a training run's workdir "
                         "(python -m bmd_jax.main writes one); leave it out")
  return path.read_text()


def evaluations(text: str, stage: str) -> list[dict]:
  """The stage's evaluation records, in the order written. A line that does not parse (the
  last one of a run killed while writing it) is skipped."""
  found = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("stage") == stage and "eval/accuracy" in record:
      found.append(record)
  return found


def _unfinished(stage_config: dict, last: dict) -> str | None:
  """Why the stage's last evaluation is not its end (None when it is): the stage's length is
  config.num_train_steps, or num_epochs of steps_per_epoch (a record's step / epoch)."""
  if last["epoch"] <= 0:
    return None
  steps_per_epoch = round(last["step"] / last["epoch"])
  total = (int(stage_config["num_train_steps"]) if stage_config.get("num_train_steps", 0) > 0
           else math.ceil(stage_config["num_epochs"] * steps_per_epoch))
  if last["step"] >= total:
    return None
  return f"its last evaluation is at step {last['step']} of {total}"


def read_run(folder: str, *, stage: str | None = None, allow_unfinished: bool = False) -> dict:
  """What the comparison needs of one run folder: {'config' (the stage's), 'stage',
  'figures', 'best_epoch', 'last_epoch', 'drop_last_examples', 'trained_on'}."""
  root = paths.resolve(folder)
  if not root.is_dir():
    raise FileNotFoundError(f"run folder {folder} does not exist (or is not a folder)")
  config = json.loads(_read_json(root / "config.json", folder))
  stages = [s.strip() for s in config.get("stages", "train").split(",") if s.strip()]
  stage = stage or stages[-1]
  records = evaluations(_read_json(root / "metrics.jsonl", folder), stage)
  if not records:
    raise RunFolderError(
        f"{folder} has no evaluation of stage {stage!r} in its metrics.jsonl (its stages: "
        f"{','.join(stages)}): the run has not evaluated that stage yet. Leave it out, or "
        "finish it (run the same training command again)")
  last = records[-1]
  stage_config = _stage_config(config, stage)
  why = _unfinished(stage_config, last)
  if why and not allow_unfinished:
    raise RunFolderError(f"{folder}: stage {stage!r} is unfinished ({why}); finish it, leave "
                         "it out, or pass --allow_unfinished to compare it as it stands")
  figures = {"final": 100 * float(last["eval/accuracy"]),
             "best": 100 * float(last.get("eval/best_accuracy", last["eval/accuracy"]))}
  drop_last = [float(r["eval/accuracy_drop_last"]) for r in records
               if "eval/accuracy_drop_last" in r]
  if "eval/accuracy_drop_last" in last:
    figures["final_drop_last"] = 100 * float(last["eval/accuracy_drop_last"])
    figures["best_drop_last"] = 100 * max(drop_last)
  examples = last.get("eval/examples_drop_last")
  info = root / "run_info.json"  # rewritten at each start: the device of the last one
  device = json.loads(info.read_text()).get("device_kind", "?") if info.exists() else "?"
  dtype = stage_config.get("model", {}).get("dtype", "?")
  return {"config": stage_config, "stage": stage, "figures": figures,
          "trained_on": f"{device}, {dtype}",
          "best_epoch": float(last.get("eval/best_epoch", last["epoch"])),
          "last_epoch": float(last["epoch"]),
          "drop_last_examples": None if examples is None else int(examples)}


# --- variants ----------------------------------------------------------------------------

def _config_field(config: dict, field: str, folder: str):
  value = config
  for part in field.split("."):
    if not isinstance(value, dict) or part not in value:
      raise RunFolderError(f"{folder}: its config has no field {field!r} to group by; check "
                           "its spelling against the run's config.json")
    value = value[part]
  return value


def variant_of(folder: str, config: dict, *, group_by: Sequence[str] = (),
               pattern: str | None = None) -> str:
  """The run's variant: by config fields, by `pattern`, or its folder name less the seed."""
  if group_by:
    return " ".join(f"{f}={json.dumps(_config_field(config, f, folder))}" for f in group_by)
  name = paths.resolve(folder).name
  match = re.search(pattern or SEED_SUFFIX, name)
  if match is None:
    if pattern is None:
      return name  # no seed suffix: its own variant
    raise RunFolderError(f"{folder}: its name {name!r} does not match --variant_pattern="
                         f"{pattern!r}; fix the pattern or leave the folder out")
  if "variant" in match.groupdict():
    return match.group("variant")
  return match.group(1) if match.groups() else match.group(0)


def read_runs(folders: Sequence[str], *, stage=None, group_by=(), pattern=None,
              allow_unfinished=False) -> list[Run]:
  runs = []
  for folder in folders:
    found = read_run(folder, stage=stage, allow_unfinished=allow_unfinished)
    variant = variant_of(folder, found["config"], group_by=group_by, pattern=pattern)
    runs.append(Run(folder, variant, found["stage"], found["figures"], found["best_epoch"],
                    found["last_epoch"], found["drop_last_examples"], found["trained_on"]))
  stages = sorted({r.stage for r in runs})
  if len(stages) > 1:  # e.g. a one-stage IR-Net against the two-step recipes
    raise RunFolderError(f"the runs' last stages differ ({', '.join(stages)}): name the one "
                         "to compare with --stage, or compare them apart")
  return runs


# --- the comparison ----------------------------------------------------------------------

def compare(runs: Sequence[Run], baseline: str | None = None, confidence: float = 0.95,
            goal_half_width: float | None = None) -> dict:
  """{'baseline', 'stage', 'variants' (in first-seen order), 'figures': {figure:
  {'variants': {variant: Summary}, 'differences': {variant: Difference}, 'seeds_needed':
  {variant: runs per variant for an interval of +-goal_half_width at the measured sds}}}}."""
  variants = list(dict.fromkeys(r.variant for r in runs))
  baseline = baseline if baseline is not None else variants[0]
  if baseline not in variants:
    raise RunFolderError(f"--baseline={baseline!r} is none of the runs' variants "
                         f"({', '.join(variants)}); pick one of them")
  figures = {}
  for key, _ in FIGURES:
    summaries = {}
    for variant in variants:
      values = [r.figures[key] for r in runs if r.variant == variant and key in r.figures]
      if values:
        summaries[variant] = welch.summarize(values)
    if baseline not in summaries:
      continue
    others = {v: s for v, s in summaries.items() if v != baseline}
    base = summaries[baseline]
    figures[key] = {
        "variants": summaries,
        "differences": {v: welch.welch_difference(s, base, confidence) for v, s in others.items()},
        "seeds_needed": {v: welch.seeds_for_half_width(s.sd, base.sd, goal_half_width, confidence)
                         for v, s in others.items()
                         if goal_half_width and min(s.n, base.n) >= 2}}
  return {"baseline": baseline, "stage": runs[0].stage, "variants": variants,
          "goal_half_width": goal_half_width,
          "figures": figures, "drop_last_examples": sorted(
              {r.drop_last_examples for r in runs if r.drop_last_examples is not None}),
          "trained_on": dict(collections.Counter(r.trained_on for r in runs))}


def table(result: dict) -> str:
  """The comparison as text: a block per figure, a row per variant."""
  baseline = result["baseline"]
  width = max(len(v) for v in result["variants"] + ["variant"])
  lines = [f"stage {result['stage']!r}, top-1 in percent; differences are a variant's mean "
           f"minus {baseline}'s, with the 95% Welch interval"]
  if len(result["trained_on"]) > 1:  # e.g. 2026-11-27: BD-BNN's end on a CPU, plain's on a GPU
    lines.append("NOT LIKE FOR LIKE: the runs last trained on different devices or dtypes (" +
                 "; ".join(f"{k}: {n} run{'s' * (n > 1)}" for k, n in result["trained_on"].items())
                 + ")")
  for key, what in FIGURES:
    if key not in result["figures"]:
      continue
    block = result["figures"][key]
    if key.endswith("drop_last") and result["drop_last_examples"]:
      counts = " or ".join(f"{n:,}" for n in result["drop_last_examples"])
      what += f", {counts} test images" + (" (the runs differ)" if " or " in counts else "")
    lines += ["", f"{key} top-1: {what}",
              f"{'variant':<{width}}  {'n':>3}  {'mean':>7}  {'sd':>6}  minus {baseline}"]
    for variant, s in block["variants"].items():
      sd = "-" if math.isnan(s.sd) else f"{s.sd:.2f}"
      row = f"{variant:<{width}}  {s.n:>3}  {s.mean:>7.2f}  {sd:>6}  "
      d = block["differences"].get(variant)
      if d is None:
        row += "(baseline)"
      elif d.low is None:
        row += f"{d.difference:+.2f}, {d.no_interval}"
      else:
        side = ("holds 0: no difference shown" if d.low <= 0 <= d.high
                else "above" if d.low > 0 else "below")
        row += (f"{d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}] (df {d.df:.1f}): "
                + (side if side.startswith("holds") else f"{side} {baseline}"))
        if variant in block["seeds_needed"]:
          needed = block["seeds_needed"][variant]
          row += (f"; +-{result['goal_half_width']:g} needs "
                  + (f"{needed} runs each" if needed else "over 10,000 runs each"))
      lines.append(row)
  return "\n".join(lines)


def as_json(result: dict, runs: Sequence[Run]) -> dict:
  """The comparison and every run's figures, JSON-ready (a missing sd or interval is null)."""
  def fields(item) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in dataclasses.asdict(item).items()}
  figures = {key: {"variants": {v: fields(s) for v, s in block["variants"].items()},
                   "differences": {v: fields(d)
                                   for v, d in block["differences"].items()},
                   "seeds_needed": block["seeds_needed"]}
             for key, block in result["figures"].items()}
  return {"unit": "percent", "stage": result["stage"], "baseline": result["baseline"],
          "goal_half_width": result["goal_half_width"], "trained_on": result["trained_on"],
          "drop_last_examples": result["drop_last_examples"], "figures": figures,
          "runs": [dataclasses.asdict(r) for r in runs]}


def main(argv):
  folders = argv[1:]
  if not folders:
    raise app.UsageError("name the run folders to compare: python -m bmd_jax.tools.compare "
                         "RUN_DIR [RUN_DIR ...]")
  f = flags.FLAGS
  if f.group_by and f.variant_pattern:
    raise app.UsageError("--group_by and --variant_pattern are two ways to name variants; "
                         "give one")
  runs = read_runs(folders, stage=f.stage, group_by=f.group_by or (),
                   pattern=f.variant_pattern, allow_unfinished=f.allow_unfinished)
  result = compare(runs, f.baseline, goal_half_width=f.goal_half_width or None)
  if f.json != "-":
    print(table(result))
  if f.json:
    text = json.dumps(as_json(result, runs), indent=1) + "\n"
    if f.json == "-":
      sys.stdout.write(text)
    else:
      paths.resolve(f.json).write_text(text)


if __name__ == "__main__":
  flags.DEFINE_string("baseline", None, "The variant the others are compared with (default: "
                      "the first run's).")
  flags.DEFINE_list("group_by", None, "Config fields whose values make a run's variant, e.g. "
                    "loss.kurtosis.target (default: the folder name less its seed suffix).")
  flags.DEFINE_string("variant_pattern", None, "A regex whose group 'variant' (or first group) "
                      "in the folder name is the variant.")
  flags.DEFINE_string("stage", None, "The stage to compare (default: each run's last).")
  flags.DEFINE_bool("allow_unfinished", False, "Compare runs whose stage has not reached its "
                    "last step, as they stand.")
  flags.DEFINE_float("goal_half_width", 0.0, "With a value (e.g. 0.7, in points), each "
                     "difference also says how many runs per variant would give an interval of "
                     "+- that at the measured standard deviations.")
  flags.DEFINE_string("json", None, "Also write the comparison as JSON to this file ('-': "
                      "stdout).")
  cli.run(main)
