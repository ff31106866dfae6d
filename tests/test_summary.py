"""Tests of bmd_jax.tools.summary: counts against hand arithmetic and the parameter tree, the table,
the configs and the command line. Everything here traces models (``jax.eval_shape``); nothing
is compiled, so the papers' full sizes are cheap."""

import importlib.util
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bmd_jax import models
from bmd_jax.tools import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def param_tree(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def leaves_named(tree, name):
  found = []

  def visit(node):
    for key, value in node.items():
      if key == name and not isinstance(value, dict):
        found.append(value)
      elif isinstance(value, dict):
        visit(value)

  visit(dict(tree))
  return found


def size(tree):
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def conv_macs(out_size, k, cin, cout):
  return out_size * out_size * k * k * cin * cout


# --- counts by hand ---------------------------------------------------------------------------

def test_resnet20_by_hand():
  s = summary.summarize(models.get_model("resnet20", num_classes=10), (1, 32, 32, 3))
  binary = (6 * conv_macs(32, 3, 16, 16)
            + conv_macs(16, 3, 16, 32) + 5 * conv_macs(16, 3, 32, 32)
            + conv_macs(8, 3, 32, 64) + 5 * conv_macs(8, 3, 64, 64))
  assert s.binary_macs == binary == 40_108_032
  assert s.float_macs == conv_macs(32, 3, 3, 16) + 64 * 10  # stem, classifier
  kernels = 9 * (6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64)
  assert s.params_1bit == kernels
  params = 269_850  # IR-Net's ResNet-20, its BatchNorm1d before the classifier included
  assert s.params == params and s.params_32bit == params - kernels
  # Mean and var of every BN: stem, 2 a block, the BatchNorm1d.
  assert s.batch_stats == 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64 + 64)
  assert s.memory_bytes == kernels / 8 + 4 * (params - kernels)
  assert s.float32_bytes == 4 * params
  assert s.binary_mac_share == pytest.approx(binary / (binary + s.float_macs))


def test_bireal_resnet18_at_224_matches_bireal_paper():
  s = summary.summarize(models.get_model("resnet18", num_classes=1000), (1, 224, 224, 3))
  binary, float_macs = 0, conv_macs(112, 7, 3, 64) + 512 * 1000  # stem, classifier
  cin, size_ = 64, 56
  for width in (64, 128, 256, 512):
    if width != cin:
      size_ //= 2
      float_macs += conv_macs(size_, 1, cin, width)  # downsample after the 2x2 average pool
    binary += conv_macs(size_, 3, cin, width) + 3 * conv_macs(size_, 3, width, width)
    cin = width
  assert s.binary_macs == binary
  assert s.float_macs == float_macs
  assert round(s.binary_macs / 1e9, 2) == 1.68  # Bi-Real Net: 1.68e9 BOPs for ResNet-18
  assert round(s.float_macs / 1e8, 1) == 1.4  # and 1.39e8 FLOPs
  assert s.params == 11_689_512  # torchvision's ResNet-18


def test_reactnet_a_at_224_matches_reactnet_paper():
  s = summary.summarize(models.get_model("reactnet_a", num_classes=1000), (1, 224, 224, 3))
  binary, cin, size_ = 0, 32, 112
  for i, cout in enumerate((64, 128, 128, 256, 256) + (512,) * 6 + (1024,) * 2):
    if cout != cin and i > 0:
      size_ //= 2
    binary += conv_macs(size_, 3, cin, cin) + conv_macs(size_, 1, cin, cout)
    cin = cout
  assert s.binary_macs == binary
  assert s.float_macs == conv_macs(112, 3, 3, 32) + 1024 * 1000
  assert round(s.binary_macs / 1e9, 2) == 4.82  # ReActNet-A: 4.82e9 BOPs
  assert round(s.float_macs / 1e7, 1) == 1.2  # and 0.12e8 FLOPs


# --- totals against the parameter tree, in every precision --------------------------------------

CASES = [("small_cnn", (1, 8, 8, 1)), ("resnet20", (1, 32, 32, 3)),
         ("resnet18_cifar", (1, 32, 32, 3)), ("vgg_small", (1, 32, 32, 3)),
         ("resnet18", (1, 64, 64, 3)), ("resnet34", (1, 64, 64, 3)),
         ("reactnet_a", (1, 64, 64, 3))]


def test_every_model_is_summarized():
  assert sorted(name for name, _ in CASES) == models.list_models(binary_only=True)


@pytest.mark.parametrize("name,shape", CASES)
def test_totals_agree_with_the_parameter_tree(name, shape):
  variables = param_tree(models.get_model(name, num_classes=10), shape)  # same in every precision
  binary, step1 = (summary.summarize(models.get_model(name, num_classes=10, precision=p), shape)
                   for p in ("binary", "binary_activations"))
  for s in (binary, step1):
    assert s.params == size(variables["params"])
    assert s.batch_stats == size(variables["batch_stats"])
    assert len({r.path for r in s.rows}) == len(s.rows)
    assert "(not called)" not in {r.kind for r in s.rows}
  assert binary.params_1bit == size(leaves_named(variables["params"], "latent_kernel")) > 0
  assert step1.params_1bit == 0
  # The same MACs in both precisions; with real weights none is binary.
  assert binary.macs == step1.macs and step1.binary_macs == 0
  assert step1.binary_input_macs == binary.binary_macs > 0 and binary.binary_input_macs == 0
  # Binary layers are the only ones whose weights shrink; the first conv and classifier do not.
  rows = {r.path: r for r in binary.rows}
  assert rows["stem_conv"].params_1bit == 0 and rows["stem_conv"].binary_macs == 0
  assert rows["classifier"].params_1bit == 0 and rows["classifier"].binary_macs == 0


def test_full_precision_has_no_binary_weights_or_macs():
  s = summary.summarize(models.get_model("resnet20", precision="full"), (1, 32, 32, 3))
  assert s.params_1bit == s.binary_macs == s.binary_input_macs == 0
  assert s.float_macs == 40_108_032 + 443_008 and s.memory_bytes == s.float32_bytes


def test_table_lists_every_layer_totals_and_assumptions():
  s = summary.summarize(models.get_model("resnet18", num_classes=1000, react=True),
                        (1, 224, 224, 3), name="resnet18")
  text = s.table()
  for row in s.rows:
    assert row.path in text
  assert "stage2_block0/downsample_conv" in text and "stage1_block0/rprelu1" in text
  assert "Total" in text and f"{s.params:,}" in text and f"{s.binary_macs:,}" in text
  assert f"binary share {100 * s.binary_mac_share:.2f}%" in text
  assert "Assumptions" in text and "both operands +-1" in text
  totals = s.totals()
  assert totals["params"] == s.params and totals["binary_mac_share"] == s.binary_mac_share


# --- configs and the command line -----------------------------------------------------------------

def load_config(name):
  spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                os.path.join(REPO, "bmd_jax", "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def keys(config, prefix=""):
  out = set()
  for key, value in config.items():
    out.add(prefix + key)
    if hasattr(value, "items") and key != "stage_overrides":
      out |= keys(value, f"{prefix}{key}.")
  return out


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_recipe_configs_keep_every_default_field(name):
  assert keys(load_config("default")) <= keys(load_config(name))


@pytest.mark.parametrize("config_name,model_name,share", [
    ("default", "small_cnn", None),
    ("cifar10", "resnet20", None), ("cifar10", "resnet18_cifar", None),
    ("cifar10", "vgg_small", None),
    ("imagenet", "resnet18", 0.924), ("imagenet", "resnet34", None),
    ("imagenet", "reactnet_a", 0.998)])
def test_summary_of_each_config_and_model(config_name, model_name, share):
  config = load_config(config_name)
  config.model.name = model_name  # what --config.model.name=... does
  s = summary.summarize_config(config)
  assert s.name == model_name and s.input_shape == (1, config.image_size, config.image_size,
                                                    config.channels)
  assert s.binary_macs > 0
  if share is not None:
    assert round(s.binary_mac_share, 3) == share


def test_summary_needs_a_class_count_it_can_find():
  config = load_config("default")
  config.dataset = "my_folder"
  with pytest.raises(ValueError, match="num_classes"):
    summary.summarize_config(config)
  assert summary.summarize_config(config, num_classes=3).rows[-1].output_shape == (3,)


def test_command_line_with_overrides():
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.summary", f"--config={REPO}/bmd_jax/configs/cifar10.py",
       "--config.model.name=vgg_small", "--config.model.precision=binary_activations"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "vgg_small  precision=binary_activations  input=1x32x32x3" in result.stdout
  assert "Parameters: 4,660,106 (0 1-bit, 4,660,106 32-bit)" in result.stdout
