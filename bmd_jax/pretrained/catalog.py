"""Reading the published runs: their records (published/<name>.json) and files, each file
checked against the sha256 its record holds before it is read."""

from __future__ import annotations

import hashlib
import json
import pathlib
import tempfile

from bmd_jax import models
from bmd_jax.infra import checkpoint
from bmd_jax.pretrained import variables_file
from bmd_jax.tools import export

PUBLISHED = pathlib.Path(__file__).resolve().parent / "published"


class UnknownRunError(KeyError):
  """A name that no published run has; the message lists those there are."""

  def __str__(self) -> str:  # KeyError would print the message quoted
    return str(self.args[0])


class PretrainedFileError(ValueError):
  """A published file that is missing or differs from the sha256 its record holds."""


def names() -> list[str]:
  """The published runs' names, sorted."""
  return sorted(p.name[:-len(".json")] for p in PUBLISHED.glob("*.json"))


def record(name: str) -> dict:
  """The record of a published run: model, recipe and command, top-1, date, commit, files."""
  path = PUBLISHED / f"{name}.json"
  if not isinstance(name, str) or "/" in name or not path.is_file():
    raise UnknownRunError(f"no published run is named {name!r}; published: "
                          f"{', '.join(names()) or 'none'}")
  return json.loads(path.read_text())


def published_runs() -> dict[str, dict]:
  """{name: {'top1', 'eval_examples', 'description', 'model'}} of every published run; top1
  is the fraction its run's own evaluation recorded for the published weights."""
  runs = {}
  for name in names():
    r = record(name)
    runs[name] = {"top1": r["top1"]["accuracy"], "eval_examples": r["top1"]["eval_examples"],
                  "description": r["description"], "model": r["model"]["name"]}
  return runs


def checked_bytes(name: str, kind: str) -> bytes:
  """The bytes of a run's file ('variables' or 'packed'), refused unless their sha256 is the
  recorded one."""
  entry = record(name)["files"][kind]
  path = PUBLISHED / entry["file"]
  if not path.is_file():
    raise PretrainedFileError(f"{path} is missing; reinstall bmd_jax")
  data = path.read_bytes()
  if hashlib.sha256(data).hexdigest() != entry["sha256"]:
    raise PretrainedFileError(f"{path} differs from the sha256 in {name}.json: the file is "
                              "damaged; reinstall bmd_jax")
  return data


def load(name: str):
  """(model, variables) of a published run: the Flax model its config names and its
  {'params', 'batch_stats'} as numpy float32. ``model.apply(variables, images, train=False)``
  gives its logits on NHWC images normalized as the record's 'normalization' says."""
  r = record(name)
  variables = variables_file.from_bytes(checked_bytes(name, "variables"))
  model = models.from_config(r["model"], r["num_classes"])
  expected = models.variable_shapes(model, tuple(r["input_shape"]))
  checkpoint.check_shapes(expected, variables, f"published run {name}")
  return model, variables


def load_packed(name: str) -> export.Exported:
  """The packed +-1 export of a published run (tools/export.py's file and loader):
  ``.predict(images)`` by XNOR-popcount, ``.packed_layers[layer]['words']`` the bits."""
  data = checked_bytes(name, "packed")
  with tempfile.TemporaryDirectory() as folder:  # export.load reads a path
    path = pathlib.Path(folder) / record(name)["files"]["packed"]["file"]
    path.write_bytes(data)
    return export.load(str(path))


def file_path(name: str, kind: str) -> pathlib.Path:
  """Where a run's file ('variables' or 'packed') is installed, e.g. to read its size."""
  return PUBLISHED / record(name)["files"][kind]["file"]
