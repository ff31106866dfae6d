"""Bit packing, XNOR-popcount layers and models, and the export of a short digits run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.infra import checkpoint
from bmd_jax.tools import export, packed
from bmd_jax.training import input_pipeline
from bmd_jax.core import layers
from bmd_jax import models
from narrow_models import CASES, FAST_COMPILE, initial_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MODELS = ("resnet18", "resnet34", "reactnet_a")


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 100, 577])
def test_pack_unpack_round_trip(n):
  rng = np.random.default_rng(n)
  negative = rng.random((3, 2, n)) < 0.5
  words = packed.pack_bits(jnp.asarray(negative))
  assert words.dtype == jnp.uint32 and words.shape == (3, 2, -(-n // 32))
  np.testing.assert_array_equal(packed.unpack_bits(words, n), negative)
  # Padding bits are 0, so they never differ between two packed vectors.
  assert int(jnp.max(words[..., -1] >> (n % 32))) == 0 or n % 32 == 0


@pytest.mark.parametrize("shape", [(3, 3, 16, 8), (3, 3, 40, 5), (1, 1, 64, 3), (70, 9)])
def test_kernel_pack_unpack_round_trip(shape):
  negative = np.random.default_rng(0).random(shape) < 0.5
  words = packed.pack_kernel(jnp.asarray(negative))
  np.testing.assert_array_equal(packed.unpack_kernel(words, shape), negative)


def test_sign_of_zero_is_plus_one():
  words = packed.pack_signs(jnp.array([0.0, -0.0, -1e-30, 2.0]))
  np.testing.assert_array_equal(packed.unpack_bits(words, 4), [False, False, True, False])


CONV_CASES = [  # (cin, kernel, stride, padding)
    (16, 3, 1, "SAME"),
    (16, 3, 2, "SAME"),
    (40, 3, 2, ((1, 1), (1, 1))),  # the models' symmetric (PyTorch) padding
    (64, 1, 1, "SAME"),
    (33, 1, 2, ((0, 0), (0, 0))),
    (5, 3, 2, "VALID"),
    (3, 5, 1, ((2, 1), (0, 2))),
]


@pytest.mark.parametrize("cin,k,stride,padding", CONV_CASES)
@pytest.mark.parametrize("scale_mode", ["mean_abs", "irnet", "none"])
@pytest.mark.parametrize("paired", [False, True])  # with the kernel's shape: shared words
def test_packed_conv_is_integer_exact(cin, k, stride, padding, scale_mode, paired):
  rng = np.random.default_rng(cin * k + stride)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, cin)), jnp.float32)
  x = x.at[0, 0, 0, 0].set(0.0)  # sign(0) = +1
  latent = jnp.asarray(rng.normal(size=(k, k, cin, 7)) + 0.1, jnp.float32)
  shapes = {"conv": latent.shape} if paired else None
  layer = packed.inference_layers({"conv": packed.pack_layer(latent, scale_mode)}, shapes)["conv"]
  # Shared words where the shape allows them: two positions a word at up to 16 channels.
  assert layer["columns"].shape[0] == (
      -(-k * k // 2) if paired and cin <= 16 and k > 1 else k * k * packed.num_words(cin))
  counts = packed.binary_conv_counts(x, layer["columns"], (k, k), stride, padding)
  negative, _ = packed.kernel_signs_and_scale(latent, scale_mode)
  signs = lambda b: jnp.where(b, -1.0, 1.0)
  expected = jax.lax.conv_general_dilated(
      signs(x < 0), signs(negative), (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert counts.dtype == jnp.int32
  np.testing.assert_array_equal(counts, expected.astype(np.int32))

  conv = layers.BinaryConv(7, (k, k), stride, padding=padding, scale_mode=scale_mode)
  module = conv.bind({"params": {"latent_kernel": latent}})
  float_out = conv.apply({"params": {"latent_kernel": latent}}, x)
  np.testing.assert_allclose(packed.packed_layer_forward(module, x, layer), float_out,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fan_in", [20, 64, 100])
def test_packed_dense_is_integer_exact(fan_in):
  rng = np.random.default_rng(fan_in)
  x = jnp.asarray(rng.normal(size=(4, fan_in)), jnp.float32)
  latent = jnp.asarray(rng.normal(size=(fan_in, 6)), jnp.float32)
  layer = packed.inference_layers({"dense": packed.pack_layer(latent, "mean_abs")})["dense"]
  counts = packed.binary_dense_counts(x, layer["columns"], fan_in)
  expected = jnp.where(x < 0, -1.0, 1.0) @ jnp.where(latent < 0, -1.0, 1.0)
  np.testing.assert_array_equal(counts, expected.astype(np.int32))
  dense = layers.BinaryDense(6)
  variables = {"params": {"latent_kernel": latent}}
  np.testing.assert_allclose(
      packed.packed_layer_forward(dense.bind(variables), x, layer),
      dense.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_the_popcount_loop_reads_the_kernel_columns_as_given():
  """No transpose of packed words in the program: the kernel arrives as (words, cout) columns.
  A transpose traced in would be fused into the XOR-popcount loop, which then reads each word
  with a stride and runs 2-5x slower on CPU (bench/popcount_loop.py)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 32)), jnp.float32)
  latent = jnp.asarray(rng.normal(size=(3, 3, 32, 64)), jnp.float32)
  layer = packed.inference_layers({"conv": packed.pack_layer(latent, "mean_abs")})["conv"]
  assert layer["columns"].shape == (9, 64) and layer["columns"].flags.c_contiguous
  module = layers.BinaryConv(64, (3, 3)).bind({"params": {"latent_kernel": latent}})
  program = jax.jit(lambda x, layer: packed.packed_layer_forward(module, x, layer)).lower(
      x, layer).as_text()
  assert "stablehlo.popcnt" in program
  assert not [line for line in program.splitlines() if "transpose" in line and "ui32" in line]


def _random_batch_stats(stats, rng):
  """Running statistics away from the init (mean 0, var 1), so folding them is tested."""
  return jax.tree_util.tree_map(
      lambda a: a + jnp.asarray(np.abs(rng.normal(size=a.shape)) * 0.5, a.dtype), stats)


# Logits: float32 sums in another order outside the binary layers, and alpha * count instead of
# a conv with alpha * sign(W); relative tolerance 1e-4 of the logits' scale.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_packed_forward_equals_float_forward_on_every_model(name):
  rng = np.random.default_rng(0)
  registered, kwargs, shape = CASES[name]
  model = models.get_model(registered, num_classes=10, **kwargs)
  x = jnp.asarray(rng.normal(size=(3, *shape[1:])), jnp.float32)
  variables = initial_variables(model, x.shape, seed=1)  # an eager init: ~1 min for reactnet_a
  variables = {"params": variables["params"],
               "batch_stats": _random_batch_stats(variables["batch_stats"], rng)}
  expected = jax.jit(lambda v, x: model.apply(v, x, train=False),
                     compiler_options=FAST_COMPILE)(variables, x)
  layers_packed, remaining, folded, info = export.pack_model(model, variables, x.shape[1:])
  assert info and all(f["precision"] == "binary" for f in info.values())
  assert not any("latent_kernel" in str(k) for k in jax.tree_util.tree_leaves_with_path(
      remaining))
  got = jax.jit(lambda v, p, x: packed.packed_apply(model, v, p, x, folded),
                compiler_options=FAST_COMPILE)(
      remaining, packed.inference_layers(layers_packed), x)
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * (1 + scale))
  np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(expected, -1))


def test_vgg_batch_norms_after_a_pool_are_not_folded():
  model = models.get_model("vgg_small", num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))
  folded = packed.foldable_batch_norms(model, variables, (1, 32, 32, 3))
  # conv1, conv3, conv5 are pooled before their BN; conv2 and conv4 are not.
  assert sorted(folded) == ["bn2", "bn4"]


# --- export of a short digits run -------------------------------------------------------------

def _eval_images(config, count=128):
  datasets = input_pipeline.create_datasets(config)
  batch = next(iter(input_pipeline.eval_batches(config, datasets.eval)))
  return batch["image"][:count]


@pytest.mark.slow
def test_export_command_reloaded_gives_the_same_predictions(digits_run, tmp_path):
  config, workdir = digits_run
  out = str(tmp_path / "digits.npz")
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.export", f"--workdir={workdir}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "smaller" in result.stdout

  exported = export.load(out)
  manifest = exported.manifest
  assert manifest["model"] == "small_cnn" and manifest["source"]["step"] == 12
  assert set(manifest["binary_layers"]) == {"conv0", "conv1", "conv2"}
  assert manifest["folded_batch_norms"] == {"bn0": "conv0", "bn1": "conv1", "bn2": "conv2"}
  sizes = manifest["sizes"]
  assert sizes["binary_weights_float32_bytes"] >= 20 * sizes["binary_weights_packed_bytes"]
  assert os.path.getsize(out) < sizes["checkpoint_variables_float32_bytes"] / 5

  ckpt = checkpoint.choose_checkpoint(workdir)
  variables = checkpoint.read_variables(ckpt)
  model, _ = models.from_checkpoint(config, variables["params"])
  images = _eval_images(config)
  expected = model.apply(variables, images, train=False)
  got = exported.predict(images)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * (1 + float(jnp.max(
      jnp.abs(expected)))))
  np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(expected, -1))
  json.dumps(manifest)  # the manifest is plain JSON


@pytest.mark.slow
def test_export_refuses_a_non_binary_stage(digits_run, tmp_path):
  config, workdir = digits_run
  with pytest.raises(ValueError, match="precision"):
    checkpoint.choose_checkpoint(workdir, precision="binary_activations")
