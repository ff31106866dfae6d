"""Publishes a finished run as package data of bmd_jax.pretrained.

    python -m bmd_jax.pretrained.publish --workdir=runs/digits --name=digits_small_cnn \
        --description="binary small CNN on scikit-learn's digits (the README's main job)"

Writes into bmd_jax/pretrained/published/: ``<name>.variables.npz`` (the checkpoint's
params and batch_stats in float32, variables_file.py), ``<name>.packed.npz`` (the packed +-1
export, tools/export.py) and ``<name>.json``, the record: model fields, recipe, overrides and
command (from the run's run_info.json), the top-1 that the run's own evaluation recorded for
the published step (metrics.jsonl) with its eval split's size, dates, the commit that trained
it, and each file's size and sha256. The published checkpoint is the one export chooses: the
newest of the last binary-precision stage.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import tempfile

from bmd_jax import models
from bmd_jax.infra import checkpoint, paths
from bmd_jax.pretrained import catalog, variables_file
from bmd_jax.tools import compare, export

NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def recorded_top1(workdir: str, stage: str, step: int) -> float:
  """eval/accuracy that the run's metrics.jsonl records for `stage` at `step`."""
  path = paths.resolve(workdir) / "metrics.jsonl"
  # The last one, where a resumed run evaluated twice.
  found = ([r["eval/accuracy"] for r in compare.evaluations(path.read_text(), stage)
            if r.get("step") == step] or [None])[-1]
  if found is None:
    raise ValueError(f"{path} records no eval/accuracy for stage {stage} at step {step}, the "
                     "checkpoint to publish; evaluate at the run's end (eval_every_epochs)")
  return float(found)


def eval_examples(config) -> int:
  """The size of the split that eval/accuracy is measured on (every example is counted)."""
  if config.dataset != "digits":
    raise ValueError(f"the eval split size of dataset {config.dataset!r} is not known here; "
                     "give --eval_examples")
  from bmd_jax.data import digits  # pylint: disable=g-import-not-at-top  (needs scikit-learn)

  _, test = digits.digits_sources(split_seed=config.get("split_seed", 0))
  return len(test)


def command_of(run_info: dict) -> tuple[str, str, list[str]]:
  """(command, recipe, overrides) of a run's argv, its workdir written DIR."""
  args = ["--workdir=DIR" if a.startswith("--workdir=") else a for a in run_info["argv"][1:]]
  recipe = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "")
  overrides = [a for a in args if a.startswith("--config.")]
  return " ".join(["python -m bmd_jax.main", *args]), recipe, overrides


def _file_entry(path: pathlib.Path, data: bytes) -> dict:
  path.write_bytes(data)
  return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def publish(workdir: str, name: str, description: str, split_size: int | None = None,
            folder: pathlib.Path = catalog.PUBLISHED) -> dict:
  """Writes the run's files and record into `folder`; returns the record."""
  if not name or set(name) - NAME_CHARACTERS:
    raise ValueError(f"--name {name!r}: use lower-case letters, digits and '_'")
  ckpt, stage, config, variables = checkpoint.read_chosen(workdir)
  model, input_shape = models.from_checkpoint(config, variables["params"])
  run_info = json.loads((paths.resolve(workdir) / "run_info.json").read_text())
  command, recipe, overrides = command_of(run_info)
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    export.export(workdir, str(pathlib.Path(tmp) / "packed.npz"), stage, ckpt.step)
    packed_bytes = (pathlib.Path(tmp) / "packed.npz").read_bytes()
  result = {
      "name": name,
      "description": description,
      "model": config.model.to_dict(),
      "num_classes": int(model.num_classes),
      "input_shape": list(input_shape),
      # export.normalization's text assumes 8-bit pixels; digits' are /16, so say it plainly.
      "normalization": {"mean": list(config.mean), "std": list(config.std),
                        "images": "in [0, 1] as bmd_jax.data gives them (digits: pixel / 16), "
                                  "then (x - mean) / std per channel"},
      "dataset": config.dataset,
      "recipe": recipe,
      "overrides": overrides,
      "command": command,
      "top1": {"accuracy": recorded_top1(workdir, stage, ckpt.step),
               "eval_examples": split_size or eval_examples(config),
               "source": f"metrics.jsonl eval/accuracy, stage {stage} step {ckpt.step}"},
      "trained": run_info["started"],
      "published": datetime.date.today().isoformat(),
      "commit": run_info.get("git", {}).get("commit"),
      "commit_dirty": run_info.get("git", {}).get("dirty"),
      "machine": f"{run_info.get('device_kind')} x{run_info.get('devices')}",
      "files": {
          "variables": _file_entry(folder / f"{name}.variables.npz",
                                   variables_file.to_bytes(variables)),
          "packed": _file_entry(folder / f"{name}.packed.npz", packed_bytes),
      },
      "full_config": "in the packed file's manifest ('config'), local paths left out",
  }
  (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
  return result


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  del argv
  f = flags.FLAGS
  r = publish(f.workdir, f.name, f.description, f.eval_examples)
  print(f"published {r['name']}: top-1 {r['top1']['accuracy']:.4f} on {r['top1']['eval_examples']}"
        f" eval examples; " + ", ".join(f"{e['file']} {e['bytes']:,} B"
                                         for e in r["files"].values()))


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top

  from bmd_jax.infra import cli  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A finished training run's workdir.")
  flags.DEFINE_string("name", None, "The published name (lower-case letters, digits, '_').")
  flags.DEFINE_string("description", None, "What the run is, in one line.")
  flags.DEFINE_integer("eval_examples", None, "The eval split's size (digits: found itself).")
  flags.mark_flags_as_required(["workdir", "name", "description"])
  cli.run(main)
