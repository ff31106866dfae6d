"""The exports outside bmd_jax: the StableHLO program runs with JAX alone and equals
export.load(...).predict at any batch size; the npz is readable with NumPy alone, as
docs/EXPORT_FORMAT.md describes it, and carries no path of the training machine."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bmd_jax.infra import checkpoint
from bmd_jax.tools import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: deserializes and calls the program without importing bmd_jax.
_CALL_WITHOUT_BMD_JAX = r"""
import sys
import jax, numpy as np
program, images_file, out_file = sys.argv[1:]
with open(program, "rb") as f:
  forward = jax.export.deserialize(bytearray(f.read()))
np.save(out_file, np.asarray(forward.call(np.load(images_file))))
assert not any(name.startswith("bmd_jax") for name in sys.modules), "bmd_jax was imported"
"""


def _export(workdir, out, *extra):
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.export", f"--workdir={workdir}", f"--out={out}", *extra],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 7])
def test_stablehlo_program_runs_without_bmd_jax_and_equals_predict(digits_run, tmp_path,
                                                                    batch):
  config, workdir = digits_run
  program = str(tmp_path / "digits.stablehlo")
  _export(workdir, program, "--format=stablehlo")
  npz = str(tmp_path / "digits.npz")
  _export(workdir, npz)

  images = np.random.default_rng(batch).standard_normal(
      (batch, config.image_size, config.image_size, config.channels)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  subprocess.run([sys.executable, "-c", _CALL_WITHOUT_BMD_JAX, program,
                  str(tmp_path / "images.npy"), str(tmp_path / "logits.npy")],
                 cwd=str(tmp_path), check=True, timeout=300)
  got = np.load(tmp_path / "logits.npy")
  expected = np.asarray(export.load(npz).predict(images))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

  info = json.loads((tmp_path / "digits.stablehlo.json").read_text())
  assert info["input"]["shape"] == ["batch", config.image_size, config.image_size,
                                    config.channels]
  assert info["input"]["mean"] == list(config.mean) and "flatbuffers" in info["requires"]
  with open(program, "rb") as f:
    assert info["sha256"] == hashlib.sha256(f.read()).hexdigest()


def _kernel_signs(words, latent_shape):
  """docs/EXPORT_FORMAT.md's NumPy unpacking, as a reader without JAX would write it."""
  bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1
  if len(latent_shape) == 2:
    n_in, n_out = latent_shape
    return (1 - 2 * bits.reshape(n_out, -1)[:, :n_in].astype(np.int8)).T
  kh, kw, cin, cout = latent_shape
  bits = bits.reshape(cout, kh, kw, -1)[..., :cin]
  return np.transpose(1 - 2 * bits.astype(np.int8), (1, 2, 3, 0))


@pytest.mark.slow
def test_npz_read_with_numpy_alone_gives_the_checkpoints_signs(digits_run, tmp_path):
  _, workdir = digits_run
  npz = str(tmp_path / "digits.npz")
  _export(workdir, npz)
  with np.load(npz) as data:
    manifest = json.loads(str(data["manifest"]))
    arrays = {k: data[k] for k in data.files}
  latent = checkpoint.read_variables(checkpoint.choose_checkpoint(workdir))["params"]
  for name, layer in manifest["binary_layers"].items():
    words = arrays[f"packed/{name}/words"]
    assert list(words.shape) == layer["words_shape"] and words.dtype == np.uint32
    kernel = latent
    for part in name.split("/"):
      kernel = kernel[part]
    expected = np.where(np.asarray(kernel["latent_kernel"]) >= 0, 1, -1)
    np.testing.assert_array_equal(_kernel_signs(words, layer["latent_shape"]), expected)
  for key, want in manifest["arrays"].items():  # the content hash, as the format describes it
    assert hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest() == (
        want["sha256"]), key
  text = json.dumps(manifest)
  assert os.path.abspath(workdir) not in text and REPO not in text


def test_manifest_config_leaves_out_local_paths_and_keeps_stage_names():
  from bmd_jax.configs import cifar10

  config = cifar10.get_config()
  config.data_dir = "/home/me/data/cifar10-jpeg"
  config.teacher = "/home/me/runs/x/checkpoints/step1"
  cleaned = export._without_local_paths(config)
  text = cleaned.to_json()
  assert "/home/me" not in text
  assert cleaned.stage_overrides.step2.init_from == "step1"  # a stage name, not a path
  assert cleaned.model.to_dict() == config.model.to_dict()
  assert config.data_dir == "/home/me/data/cifar10-jpeg"  # the caller's config is untouched
