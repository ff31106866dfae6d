"""A user's own model, estimator and loss term, outside the package, named in a config by their
import paths (bmd_jax/core/components.py, docs/EXTENDING.md): every process that reads the config
rebuilds them, and the worked example in examples/custom_parts trains through
`python -m bmd_jax.main` and is read by export and analyze from a folder off bmd_jax's source."""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bmd_jax.core import components, losses, objective, quantizers
from bmd_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "custom_parts")
NET = "custom_parts.net:TinyBinaryNet"
TERM = "custom_parts.term:outside_clip"
ESTIMATOR = "custom_parts.estimator:NARROWING_STE"


@pytest.fixture
def example_on_path(monkeypatch):
  monkeypatch.syspath_prepend(os.path.dirname(EXAMPLE))
  monkeypatch.setattr(quantizers, "_IMPORTED", {})


# --- the one place where names become components -------------------------------------------

def test_lookup_takes_a_registered_name_first_then_an_import_path(example_on_path):
  registry = {"mine": 1}
  assert components.lookup(registry, "mine", "thing") == 1
  assert components.lookup(registry, "json:dumps", "thing") is json.dumps
  assert components.lookup(registry, "os.path:join", "thing") is os.path.join
  with pytest.raises(components.ComponentError, match=r"unknown thing 'other' \(f\).*'mine'"):
    components.lookup(registry, "other", "thing", "f")


def test_a_module_that_fails_to_import_keeps_its_own_error(tmp_path, monkeypatch):
  (tmp_path / "broken_parts.py").write_text("import not_installed_dependency_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_xyz"):
    components.resolve("broken_parts:thing", "model.name")  # not "put it on PYTHONPATH"


def test_register_refuses_a_taken_name_or_a_path(monkeypatch):
  monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
  factory = models.MODELS["small_cnn"]
  assert models.register("small_cnn_copy", factory) is factory
  assert type(models.get_model("small_cnn_copy", width=8)).__name__ == "SmallBinaryCNN"
  with pytest.raises(ValueError, match="registered already"):
    models.register("small_cnn", factory)
  models.register("small_cnn", factory, replace=True)
  with pytest.raises(ValueError, match="separator"):
    models.register("pkg:Net", factory)


# --- a model by its import path, with its own options ---------------------------------------

def test_a_model_by_import_path_takes_its_own_fields(example_on_path):
  config = ml_collections.ConfigDict({"name": NET, "precision": "binary", "width": 8,
                                      "depth": 4, "input_quantizer": "ste"})
  model = models.from_config(config, num_classes=10)
  assert type(model).__name__ == "TinyBinaryNet" and (model.width, model.depth) == (8, 4)
  params = models.variable_shapes(model, (8, 8, 1))["params"]
  assert params["conv3"]["latent_kernel"].shape == (3, 3, 8, 8)
  with pytest.raises(ValueError, match="does not accept"):
    models.from_config({**config.to_dict(), "widht": 8}, num_classes=10)

  # Its last binary conv opts out (regularize=False): neither term covers it.
  assert models.kurtosis_layers(model, (8, 8, 1)) == [
      "conv0/latent_kernel", "conv1/latent_kernel", "conv2/latent_kernel"]
  assert models.wdm_layers(model, (8, 8, 1)) == [
      "conv0/latent_kernel", "conv1/latent_kernel", "conv2/latent_kernel"]


def test_from_checkpoint_rebuilds_it_from_a_stored_config(example_on_path, digits_config):
  config = digits_config
  config.model.name = NET
  config.model.width = 8
  stored = ml_collections.ConfigDict(json.loads(config.to_json()))  # as a tool reads it
  model, shape = models.from_checkpoint(stored, {"classifier": {"kernel": np.zeros((8, 7))}})
  assert type(model).__name__ == "TinyBinaryNet" and model.num_classes == 7
  assert shape == (8, 8, 1)


# --- a loss term by its import path ---------------------------------------------------------

def _loss_config(**term_block):
  return ml_collections.ConfigDict({"ce": {"weight": 1.0}, "clip": term_block})


def test_a_term_by_import_path_joins_the_objective_with_its_weight(example_on_path):
  params = {"a": {"latent_kernel": jnp.asarray([[0.5, -1.5], [2.0, 0.0]])},
            "b": {"kernel": jnp.full((2, 2), 9.0)}}  # a real layer: not the term's
  inputs = objective.Inputs(params=params, logits=jnp.zeros((2, 3)), labels=jnp.zeros(2, int))
  loss_cfg = _loss_config(term=TERM, weight=0.5, margin=1.0)
  objective.check_blocks(loss_cfg)
  assert list(objective.terms(loss_cfg)) == [*objective.TERMS, "clip"]
  total, parts, _ = objective.objective(loss_cfg, inputs)
  expected = (0.5 ** 2 + 1.0 ** 2) / 4  # relu(|w| - 1)^2, averaged
  np.testing.assert_allclose(parts["clip"], expected, rtol=1e-6)
  np.testing.assert_allclose(total, losses.cross_entropy(inputs.logits, inputs.labels)
                             + 0.5 * expected, rtol=1e-6)
  np.testing.assert_allclose(objective.weighted_terms(loss_cfg, inputs)["clip"], 0.5 * expected,
                             rtol=1e-6)
  # Its own option, from its block.
  np.testing.assert_allclose(objective.objective(_loss_config(term=TERM, weight=1.0, margin=2.0),
                                                 inputs)[1]["clip"], 0.0)


def test_a_term_block_names_an_importable_term_of_its_own_name(example_on_path):
  with pytest.raises(ValueError, match="bmd_jax's own term"):
    objective.check_blocks({"kurtosis": {"term": TERM, "weight": 1.0}})
  with pytest.raises(components.ComponentError, match="import path"):
    objective.check_blocks({"clip": {"term": "outside_clip", "weight": 1.0}})
  with pytest.raises(components.ComponentError, match="no attribute"):
    objective.check_blocks({"clip": {"term": "custom_parts.term:nope", "weight": 1.0}})
  with pytest.raises(ValueError, match=r"loss.clip.term = 'package.module:attribute'"):
    objective.check_blocks({"clip": {"weight": 1.0}})  # neither registered nor named


# --- the worked example, run as a user would, off bmd_jax's source path ---------------------

def _run(args, cwd, env):
  result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=420)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_the_example_trains_and_export_and_analyze_read_the_run(tmp_path):
  parts = tmp_path / "my_project"
  shutil.copytree(EXAMPLE, parts / "custom_parts",
                  ignore=shutil.ignore_patterns("__pycache__", "README.md"))
  workdir = tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": str(parts)}  # the user's folder only: no REPO on the path
  check = subprocess.run([sys.executable, "-c", "import bmd_jax, configs"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
  assert "No module named 'configs'" in check.stderr  # bmd_jax is the installed package only

  _run(["bmd_jax.main", f"--config={parts / 'custom_parts' / 'config.py'}",
        f"--workdir={workdir}", "--config.num_train_steps=8", "--config.log_every_steps=4",
        "--config.model.width=16"], tmp_path, env)

  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  logged = [r for r in records if "train/loss" in r]
  assert logged, records
  kurtosis = {key for r in logged for key in r if key.startswith("kurtosis/")}
  assert kurtosis == {"kurtosis/conv0/latent_kernel", "kurtosis/conv1/latent_kernel"}  # conv2 out
  assert all("train/outside_clip" in r for r in logged)
  width = [r[f"estimators/{ESTIMATOR}/width"] for r in logged]
  assert width[0] > width[-1] >= 1.0  # the estimator's window narrowed from 2 towards 1
  with open(workdir / "config.json") as f:
    stored = json.load(f)
  assert stored["model"]["name"] == NET and stored["model"]["width"] == 16

  out = tmp_path / "export.npz"
  exported = _run(["bmd_jax.tools.export", f"--workdir={workdir}", f"--out={out}"], tmp_path, env)
  assert f"exported {NET} (3 binary layers" in exported.stdout
  analysis = tmp_path / "analysis"
  _run(["bmd_jax.tools.analyze", f"--workdir={workdir}", f"--out={analysis}"], tmp_path, env)
  with open(analysis / "analysis.json") as f:
    rows = json.load(f)["layers"]
  assert sorted(r["layer"] for r in rows) == ["conv0", "conv1", "conv2"]

  # Without the user's folder on the path, a tool says what is missing and how to fix it.
  failed = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.export", f"--workdir={workdir}",
       f"--out={tmp_path / 'again.npz'}"],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True,
      timeout=300)
  assert failed.returncode != 0 and "PYTHONPATH" in failed.stderr
