"""BD-BNN ablation on CIFAR-10 (or any config): which of its terms help, over seeds.

Runs, with the same schedule and seeds, the variants below through train_and_evaluate and
prints a markdown table of final test accuracy (mean and spread over seeds) and each
variant's mean final per-layer kurtosis:

  full_precision   real weights and activations, one stage
  plain_binary     IR-Net-style binary network (both stages, no kurtosis, no WDM)
  kurtosis_only    both stages, kurtosis on, no WDM
  wdm_<form>       both stages, WDM of that form on, no kurtosis
  bd_bnn           both stages, kurtosis and WDM (softmax_kl)

Variants whose first stage is the same train it once per seed: plain binary and the WDM-only
variants share step 1 (no kurtosis), kurtosis only and BD-BNN share theirs (kurtosis on); the
later variant's step 2 starts from, and is taught by, that checkpoint (ablation.json records
whose step 1 each variant used). Every run reads the same decoded-image cache.

The CPU-sized schedule of docs/RESULTS.md (ResNet-20, 300 steps of 128 images a stage, about
1.5 hours on 2 cores). EDE's t advances every step, since a stage is shorter than an epoch,
and only up to 1: compressed into 300 steps, the recipe's t_max = 10 made step 1 diverge at
the end (train accuracy 32% -> 23%, test 15.5%):

    python bench/ablation.py --config=bmd_jax/configs/cifar10.py --workdir=runs/ablation \\
        --config.data_dir=../shared/data/cifar10-jpeg --config.num_train_steps=300 \\
        --config.cache_decoded_images=True --config.estimators.schedule_per=step \\
        --config.estimators.ede_t_max=1.0 --seeds=0,1
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bmd_jax

import bmd_jax  # noqa: E402
from bmd_jax.infra import checkpoint  # noqa: E402
from bmd_jax.training import input_pipeline, metric_writers, stages, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "bmd_jax/configs/cifar10.py",
                                "Base config (two stages).")
flags.DEFINE_string("workdir", "runs/ablation", "One sub-folder per variant and seed.")
flags.DEFINE_string("seeds", "0,1", "Comma-separated seeds.")
flags.DEFINE_string("variants", "", "Comma-separated subset of the variants; '' for all.")

WDM_FORMS = ("softmax_kl", "histogram", "released")


def variants(base):
  """name -> function that edits a copy of the base config."""

  def set_terms(kurtosis: float, wdm: float, form: str = "softmax_kl"):
    def edit(config):
      config.loss.kurtosis.weight = kurtosis
      for stage in config.stage_overrides.values():
        if "loss" not in stage:
          stage.loss = ml_collections.ConfigDict()
        stage.loss.kurtosis = {**stage.loss.get("kurtosis", {}), "weight": kurtosis}
        if stage.get("teacher"):
          stage.loss.wdm = {**stage.loss.get("wdm", {}), "weight": wdm, "form": form}
    return edit

  def full_precision(config):
    config.model.precision = "full"
    config.loss.kurtosis.weight = 0.0
    config.stages = "fp"
    config.stage_overrides.fp = {}

  table = {"full_precision": full_precision, "plain_binary": set_terms(0.0, 0.0),
           "kurtosis_only": set_terms(1.0, 0.0)}
  for form in WDM_FORMS:
    table[f"wdm_{form}"] = set_terms(0.0, 1.0, form)
  table["bd_bnn"] = set_terms(1.0, 1.0)
  return table


def _stage_key(stage) -> str:
  """What a stage trains, independent of the stages after it (for sharing step 1)."""
  fields = stage.config.to_dict()
  for later_only in ("stages", "stage_overrides"):
    fields.pop(later_only, None)
  return json.dumps(fields, sort_keys=True, default=str)


def run_variant(base, name, edit, seed, workdir, first_stages, datasets=None):
  """Trains one variant; its first stage is reused from an earlier variant trained alike.

  `first_stages` maps a first stage's key to (variant, its checkpoint folder): variants
  whose step 1 is the same (plain binary and the WDM-only ones; kurtosis only and BD-BNN)
  train it once per seed, and their step 2 starts from, and is taught by, that checkpoint.
  """
  config = base.copy_and_resolve_references()
  with config.unlocked():
    edit(config)
    config.seed = seed
  run_dir = os.path.join(workdir, f"{name}_seed{seed}")
  all_stages = stages.stage_list(config)
  first = all_stages[0]
  key = _stage_key(first)
  reused_from = None
  if len(all_stages) > 1 and key in first_stages:
    reused_from, folder = first_stages[key]
    with config.unlocked():
      config.stages = ",".join(s.name for s in all_stages[1:])
      for later in all_stages[1:]:
        overrides = config.stage_overrides[later.name]
        for field in ("init_from", "teacher"):
          if overrides.get(field) == first.name:
            overrides[field] = folder
  else:
    first_stages[key] = (name, str(checkpoint.stage_directory(run_dir, first.name)))
  results = train.train_and_evaluate(config, run_dir, datasets)
  last = list(results.values())[-1]
  return {"accuracy": last["eval"]["eval/accuracy"],
          "kurtosis": _final_kurtosis(os.path.join(run_dir, "metrics.jsonl")),
          "first_stage_from": reused_from or name}


def _final_kurtosis(metrics_path):
  events = [json.loads(line) for line in open(metrics_path)]
  train_events = [e for e in events if "train/loss" in e]
  if not train_events:
    return {}
  return {k[len("kurtosis/"):]: v for k, v in train_events[-1].items()
          if k.startswith("kurtosis/")}


def main(argv):
  del argv
  bmd_jax.configure_cpu()  # before any JAX computation
  metric_writers.console_logging()
  base = FLAGS.config
  seeds = [int(s) for s in FLAGS.seeds.split(",")]
  table = variants(base)
  chosen = [v for v in FLAGS.variants.split(",") if v] or list(table)
  unknown = sorted(set(chosen) - set(table))
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; choose from {sorted(table)}")
  rows = {name: [] for name in chosen}
  datasets = input_pipeline.create_datasets(base)  # one decoded-image cache for every run
  for seed in seeds:
    first_stages = {}
    for name in chosen:
      rows[name].append(run_variant(base, name, table[name], seed, FLAGS.workdir, first_stages,
                                     datasets))
  print("| variant | test accuracy (mean) | spread (max - min) | seeds | mean final kurtosis |")
  print("|---|---|---|---|---|")
  for name, runs in rows.items():
    accs = [r["accuracy"] for r in runs]
    kurts = [statistics.mean(r["kurtosis"].values()) for r in runs if r["kurtosis"]]
    kurt = f"{statistics.mean(kurts):.2f}" if kurts else "-"
    print(f"| {name} | {100 * statistics.mean(accs):.2f}% | {100 * (max(accs) - min(accs)):.2f} "
          f"| {len(accs)} | {kurt} |")
  with open(os.path.join(FLAGS.workdir, "ablation.json"), "w") as f:
    json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
