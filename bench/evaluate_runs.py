"""Every run's final weights evaluated alike, on one device: the top-1 of record for runs trained
in GPU windows, where a GPU's TF32 moved top-1 by 0.4 points on 2026-11-27 (the windows now
evaluate at 'highest' precision over the whole test split too; this recomputes it anywhere).

    JAX_PLATFORMS=cpu python bench/evaluate_runs.py --runs=/tmp/window5 \
        --data_dir=../shared/data/cifar10-jpeg --json=/tmp/window5/evaluation.json

--runs is a folder of run workdirs (<variant>_seed<n>/, as bench/gpu_train.py makes them, or a
run group's <group>/<run>/) or of the runs_*.tar.gz archives a window returned (unpacked into a
temporary folder first). Each
run's newest readable checkpoint of its last binary stage (checkpoint.read_chosen) is evaluated
over the whole test split of --data_dir at float32 'highest' precision with the training's own
evaluator (evaluation.create_evaluator), on this process's first device. --json gets one record a
run: run, stage, step, top1, loss, eval_examples, precision, device, data_dir, command, date.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True, help="run workdirs or runs_*.tar.gz archives")
  parser.add_argument("--data_dir", default=os.environ.get(
      "BMD_CIFAR10_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
          __file__))), "..", "shared", "data", "cifar10-jpeg")),
                      help="the image folder with the whole test split")
  parser.add_argument("--batch", type=int, default=1000, help="evaluation batch")
  parser.add_argument("--json", default="", help="write the records (a JSON list) here")
  return parser.parse_args(argv)


def run_folders(runs: str, scratch: str) -> tuple[str, list[str]]:
  """(their root, the run workdirs under `runs`), the archives' unpacked into `scratch`."""
  archives = sorted(glob.glob(os.path.join(runs, "runs_*.tar.gz")))
  for archive in archives:  # a run group's archives unpack into one folder of the group
    with tarfile.open(archive) as tar:
      tar.extractall(scratch, filter="data")
  root = scratch if archives else runs
  # A run group's folder (run_group.json) holds its runs one level down.
  parents = [root] + [os.path.join(root, d) for d in os.listdir(root)
                      if os.path.isfile(os.path.join(root, d, "run_group.json"))]
  folders = sorted(os.path.join(parent, d) for parent in parents for d in os.listdir(parent)
                   if os.path.isdir(os.path.join(parent, d, "checkpoints")))
  if not folders:
    raise SystemExit(f"evaluate_runs.py: no run workdir (<run>/checkpoints) nor runs_*.tar.gz "
                     f"in {runs}")
  return root, folders


def evaluate(workdir: str, root: str, data_dir: str, batch: int, datasets_cache: dict) -> dict:
  """The run at `workdir` evaluated; its record names it by its path under `root`."""
  import jax
  from bmd_jax.infra import checkpoint
  from bmd_jax.training import evaluation, input_pipeline, sharding, train
  from bmd_jax.models import create_model
  ckpt, stage, config, variables = checkpoint.read_chosen(workdir)
  # Alike for every run: the whole split, one device, float32 'highest', the device input path.
  config.data_dir = data_dir
  config.input_path = "device"
  config.num_devices = 1
  config.steps_per_eval = -1
  config.eval_precision = "highest"
  key = (config.dataset, config.data_dir, config.image_size)
  if key not in datasets_cache:
    datasets_cache[key] = input_pipeline.create_datasets(config)
  datasets = datasets_cache[key]
  config.eval_batch_size = min(batch, datasets.info.num_eval)
  mesh = sharding.mesh_from_config(config)
  model = create_model(config, datasets.info.num_classes)
  steps_per_epoch = max(1, datasets.info.num_train // config.batch_size)
  state = train.create_train_state(
      jax.random.PRNGKey(0), config, model, datasets.info.image_shape,
      train.create_learning_rate_fn(config, steps_per_epoch), params=variables["params"],
      batch_stats=variables["batch_stats"])
  metrics = evaluation.create_evaluator(config, datasets, mesh)(sharding.replicate(state, mesh))
  return {"run": os.path.relpath(workdir, root), "stage": stage, "step": ckpt.step,
          "top1": metrics["eval/accuracy"], "loss": metrics["eval/loss"],
          "eval_examples": datasets.info.num_eval, "precision": "highest",
          "device": jax.devices()[0].device_kind, "data_dir": data_dir}


def main(argv=None):
  args = parse_args(argv)
  records, cache = [], {}
  with tempfile.TemporaryDirectory() as scratch:
    root, folders = run_folders(args.runs, scratch)
    for workdir in folders:
      record = evaluate(workdir, root, args.data_dir, args.batch, cache)
      record.update(command=" ".join(["python", *sys.argv]),
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"))
      print(json.dumps(record), flush=True)
      records.append(record)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(records, f, indent=1)
  return records


if __name__ == "__main__":
  main()
