"""bmd_jax.pretrained: the published runs load, give the top-1 their runs recorded (computed
here through the model's own apply on the digits test split), their packed exports give the
float model's logits, and damaged files and unknown names are refused in one line."""

import hashlib
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax import pretrained
from bmd_jax.data import digits
from bmd_jax.pretrained import catalog, publish

NAME = "digits_small_cnn"


def _test_split(record):
  """(images normalized as in training, labels) of the digits test split."""
  _, test = digits.digits_sources()  # default split_seed 0: the recipe's, no override
  assert record["recipe"] == "default" and record["overrides"] == []
  images = np.stack([test[i]["image"] for i in range(len(test))])
  labels = np.array([test[i]["label"] for i in range(len(test))])
  norm = record["normalization"]
  return (images - np.array(norm["mean"])) / np.array(norm["std"]), labels


def _logits(model, variables, images):
  with jax.default_matmul_precision("highest"):  # the run's eval_precision
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(images, jnp.float32))


def test_load_gives_the_recorded_top1():
  record = pretrained.record(NAME)
  model, variables = pretrained.load(NAME)
  images, labels = _test_split(record)
  assert len(labels) == record["top1"]["eval_examples"]
  correct = int(np.sum(np.argmax(_logits(model, variables, images), -1) == labels))
  assert correct == round(record["top1"]["accuracy"] * len(labels))
  assert record["top1"]["accuracy"] > 0.95  # the README's "about 98%"


def test_packed_export_gives_the_float_models_logits():
  model, variables = pretrained.load(NAME)
  images, _ = _test_split(pretrained.record(NAME))
  images = images[:128]
  expected = _logits(model, variables, images)
  exported = pretrained.load_packed(NAME)
  assert set(exported.packed_layers) == {"conv0", "conv1", "conv2"}
  got = exported.predict(images)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * (1 + float(jnp.max(
      jnp.abs(expected)))))
  np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(expected, -1))


def test_list_returns_the_recorded_figures():
  files = sorted(catalog.PUBLISHED.glob("*.json"))
  runs = pretrained.list()
  assert sorted(runs) == [p.stem for p in files] and NAME in runs
  for path in files:
    record = json.loads(path.read_text())
    assert runs[path.stem] == {"top1": record["top1"]["accuracy"],
                               "eval_examples": record["top1"]["eval_examples"],
                               "description": record["description"],
                               "model": record["model"]["name"]}
    for entry in record["files"].values():  # the record's hashes are the files' own
      data = (catalog.PUBLISHED / entry["file"]).read_bytes()
      assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["bytes"])


@pytest.fixture
def published_copy(tmp_path, monkeypatch):
  folder = tmp_path / "published"
  shutil.copytree(catalog.PUBLISHED, folder)
  monkeypatch.setattr(catalog, "PUBLISHED", folder)
  return folder


@pytest.mark.parametrize("kind,loader", [("variables", pretrained.load),
                                         ("packed", pretrained.load_packed)])
def test_a_flipped_byte_is_refused(published_copy, kind, loader):
  path = published_copy / f"{NAME}.{kind}.npz"
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(pretrained.PretrainedFileError, match=f"{path.name} differs from the "
                     "sha256") as error:
    loader(NAME)
  assert "\n" not in str(error.value)


def test_a_missing_file_is_refused(published_copy):
  (published_copy / f"{NAME}.variables.npz").unlink()
  with pytest.raises(pretrained.PretrainedFileError, match="is missing"):
    pretrained.load(NAME)


@pytest.mark.parametrize("name", ["digits", "../published/digits_small_cnn", ""])
def test_an_unknown_name_lists_the_names(name):
  with pytest.raises(pretrained.UnknownRunError) as error:
    pretrained.load(name)
  assert str(error.value) == (f"no published run is named {name!r}; published: "
                              f"{', '.join(pretrained.names())}")
  assert NAME in str(error.value)


# --- publish's reading of a run -------------------------------------------------------------

def test_publish_reads_the_top1_of_the_published_step(tmp_path):
  rows = [{"stage": "step1", "step": 10, "eval/accuracy": 0.5},
          {"stage": "step2", "step": 10, "train/loss": 1.0},
          {"stage": "step2", "step": 10, "eval/accuracy": 0.7},
          {"stage": "step2", "step": 20, "eval/accuracy": 0.9}]
  # The last line torn by a kill while it was written: skipped, as every reader does.
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) +
                                          '\n{"stage": "step2", "st')
  assert publish.recorded_top1(str(tmp_path), "step2", 10) == 0.7
  with pytest.raises(ValueError, match="no eval/accuracy for stage step2 at step 15"):
    publish.recorded_top1(str(tmp_path), "step2", 15)


def test_publish_records_the_command_without_the_local_workdir():
  argv = ["/x/bmd_jax/main.py", "--config=cifar10", "--workdir=/home/me/runs/c10",
          "--config.num_epochs=5"]
  assert publish.command_of({"argv": argv}) == (
      "python -m bmd_jax.main --config=cifar10 --workdir=DIR --config.num_epochs=5",
      "cifar10", ["--config.num_epochs=5"])


def test_the_documented_example_runs_and_prints_what_the_doc_shows(tmp_path):
  doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "PRETRAINED.md").read_text()
  (code,) = re.findall(r"```python\n(.*?)```", doc, re.S)
  (tmp_path / "example.py").write_text(code)
  result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  shown = doc.split("Its output")[1].split("\n\n")[1]
  for line in shown.splitlines():
    assert line.strip() in result.stdout
