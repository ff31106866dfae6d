"""Which layers the kurtosis term covers: every conv but the first, in the originals' definition
order (PyTorch's module registration order), with and without shortcut/downsample convs; and
per-layer target lists in that order.

The expected lists are written from the originals' modules (names in the comments), not
produced by bmd_jax: a Flax name maps to the PyTorch one, the order is PyTorch's.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest
from narrow_models import CASES

from bmd_jax.core import losses, objective
from bmd_jax import models
from bmd_jax.training import train
from bmd_jax.core.layers import BinaryConv, Conv
from bmd_jax.core.layers import BinaryDense, regularize_mark

BIRCONV, REAL = "latent_kernel", "kernel"


def bireal_order(blocks_per_stage):
  """Bi-Real / ReActNet ResNet (liuzechun/ReActNet resnet/birealnet.py): each PyTorch block has
  one `binary_conv`; layerN.0 (N > 1) registers `downsample` (pool, conv1x1, BN) after its
  conv. bmd_jax's block i of a stage holds PyTorch blocks 2i (conv1) and 2i + 1 (conv2)."""
  order = []
  for stage, blocks in enumerate(blocks_per_stage, start=1):
    for torch_block in range(2 * blocks):
      ours = f"stage{stage}_block{torch_block // 2}"
      order.append(f"{ours}/conv{torch_block % 2 + 1}/{BIRCONV}")  # layerN.j.binary_conv
      if torch_block == 0 and stage > 1:
        order.append(f"{ours}/downsample_conv/{REAL}")  # layerN.0.downsample.1
  return order


# ReActNet's ResNet-18 (BiRealNet [4, 4, 4, 4]), written out: the release's 19 layers.
RESNET18 = [
    "stage1_block0/conv1/latent_kernel",  # layer1.0.binary_conv
    "stage1_block0/conv2/latent_kernel",  # layer1.1.binary_conv
    "stage1_block1/conv1/latent_kernel",  # layer1.2.binary_conv
    "stage1_block1/conv2/latent_kernel",  # layer1.3.binary_conv
    "stage2_block0/conv1/latent_kernel",  # layer2.0.binary_conv
    "stage2_block0/downsample_conv/kernel",  # layer2.0.downsample.1
    "stage2_block0/conv2/latent_kernel",  # layer2.1.binary_conv
    "stage2_block1/conv1/latent_kernel",  # layer2.2.binary_conv
    "stage2_block1/conv2/latent_kernel",  # layer2.3.binary_conv
    "stage3_block0/conv1/latent_kernel",  # layer3.0.binary_conv
    "stage3_block0/downsample_conv/kernel",  # layer3.0.downsample.1
    "stage3_block0/conv2/latent_kernel",  # layer3.1.binary_conv
    "stage3_block1/conv1/latent_kernel",  # layer3.2.binary_conv
    "stage3_block1/conv2/latent_kernel",  # layer3.3.binary_conv
    "stage4_block0/conv1/latent_kernel",  # layer4.0.binary_conv
    "stage4_block0/downsample_conv/kernel",  # layer4.0.downsample.1
    "stage4_block0/conv2/latent_kernel",  # layer4.1.binary_conv
    "stage4_block1/conv1/latent_kernel",  # layer4.2.binary_conv
    "stage4_block1/conv2/latent_kernel",  # layer4.3.binary_conv
]


def reactnet_a_order(stem_width, block_widths):
  """ReActNet-A (mobilenet/reactnet.py): a block registers binary_3x3, then binary_pw, or
  binary_pw_down1 and binary_pw_down2 where it doubles the channels."""
  order, features = [], stem_width
  for i, width in enumerate(block_widths, start=1):
    order.append(f"block{i:02d}/conv_3x3/{BIRCONV}")
    suffixes = [""] if width == features else ["_a", "_b"]
    order += [f"block{i:02d}/conv_1x1{s}/{BIRCONV}" for s in suffixes]
    features = width
  return order


def torchvision_order(blocks_per_stage):
  """torchvision's resnet.py BasicBlock: conv1, bn1, conv2, bn2, then downsample (0: conv)."""
  order = []
  for stage, blocks in enumerate(blocks_per_stage, start=1):
    for block in range(blocks):
      order += [f"stage{stage}_block{block}/conv{j}/{REAL}" for j in (1, 2)]
      if block == 0 and stage > 1:
        order.append(f"stage{stage}_block{block}/downsample_conv/{REAL}")
  return order


def irnet_cifar_order(blocks_per_stage, real_shortcuts):
  """IR-Net's CIFAR ResNets (CIFAR-10/ResNet20, /ResNet18 in htqin/IR-Net): a BasicBlock
  registers conv1, bn1, conv2, bn2, then `shortcut` (0: a real 1x1 conv) where the shape
  changes; ResNet-20's option-A shortcut has no parameters."""
  order = []
  for stage, blocks in enumerate(blocks_per_stage, start=1):
    for block in range(blocks):
      order += [f"stage{stage}_block{block}/conv{j}/{BIRCONV}" for j in (1, 2)]
      if real_shortcuts and block == 0 and stage > 1:
        order.append(f"stage{stage}_block{block}/shortcut/conv/{REAL}")  # layerN.0.shortcut.0
  return order


# IR-Net's VGG-Small: conv0 (real, first) then the binary conv1..conv5.
VGG_SMALL = [f"conv{i}/latent_kernel" for i in range(1, 6)]
SMALL_CNN = [f"conv{i}/latent_kernel" for i in range(3)]

EXPECTED = {
    "small_cnn": SMALL_CNN,
    "vgg_small": VGG_SMALL,
    "resnet18": RESNET18,
    "resnet34": bireal_order((3, 4, 6, 3)),
    "reactnet_a": reactnet_a_order(CASES["reactnet_a"][1]["stem_width"],
                                   CASES["reactnet_a"][1]["block_widths"]),
    "resnet34_torchvision": torchvision_order((3, 4, 6, 3)),
    "resnet20": irnet_cifar_order((3, 3, 3), real_shortcuts=False),
    "resnet18_cifar": irnet_cifar_order((2, 2, 2, 2), real_shortcuts=True),
}
NARROW = {**CASES, "resnet34_torchvision": (
    "resnet34_torchvision", {"widths": (8, 16, 32, 64)}, (2, 64, 64, 3))}


def narrow_model(name):
  registered, kwargs, shape = NARROW[name]
  return models.get_model(registered, num_classes=10, **kwargs), shape[1:]


def is_shortcut(path):
  return "downsample" in path or "shortcut" in path


def test_every_registered_model_has_an_expected_list():
  assert sorted(EXPECTED) == models.list_models()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kurtosis_layers_in_definition_order(name):
  model, shape = narrow_model(name)
  assert models.kurtosis_layers(model, shape) == EXPECTED[name]
  without = [p for p in EXPECTED[name] if not is_shortcut(p)]
  assert models.kurtosis_layers(model, shape, include_shortcuts=False) == without


def test_release_counts_on_resnet18():
  # ReActNet's ResNet-18: 16 binary convs + 3 real downsample convs (the release's 19 targets),
  # and so IR-Net's CIFAR ResNet-18 (3 real 1x1 shortcut convs).
  for order in (RESNET18, EXPECTED["resnet18_cifar"]):
    assert len(order) == 19 and sum(map(is_shortcut, order)) == 3


def _random_params(model, shape, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                                train.variable_shapes(model, shape)["params"])


def test_19_per_layer_targets_on_resnet18_pair_with_the_layers_in_order(digits_config):
  model, shape = narrow_model("resnet18")
  layers = models.kurtosis_layers(model, shape)
  targets = tuple(np.linspace(1.0, 2.8, 19).round(2))
  digits_config.loss.kurtosis.targets = targets
  assert objective.kurtosis_targets(digits_config.loss.kurtosis, layers) == targets
  params = _random_params(model, shape)
  target = objective.kurtosis_targets(digits_config.loss.kurtosis, layers)
  loss, per_layer = jax.jit(lambda p: losses.kurtosis_loss(p, target, layers=layers))(params)
  assert layers == RESNET18 and sorted(per_layer) == sorted(RESNET18)
  flat = {"/".join(k.key for k in p): v
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  expected = np.mean([(_np_kurtosis(flat[path]) - t) ** 2 for path, t in zip(RESNET18, targets)])
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def _np_kurtosis(w):
  w = np.asarray(w, np.float64).ravel()
  c = w - w.mean()
  return np.mean(c ** 4) / (np.sum(c ** 2) / (w.size - 1)) ** 2


@pytest.mark.parametrize("count", [16, 18, 20])
def test_wrong_number_of_targets_names_the_expected_count(digits_config, count):
  model, shape = narrow_model("resnet18")
  layers = models.kurtosis_layers(model, shape)
  digits_config.loss.kurtosis.targets = (1.8,) * count
  with pytest.raises(ValueError, match=r"has %d entries .* regularizes 19 layers" % count):
    objective.kurtosis_targets(digits_config.loss.kurtosis, layers)
  with pytest.raises(ValueError, match="for 19 regularized layers"):
    losses.kurtosis_loss(_random_params(model, shape), (1.8,) * count, layers=layers)


def test_a_list_of_targets_has_its_own_config_field(digits_config):
  digits_config.loss.kurtosis.targets = [1.4] * 19  # a list is stored (as a tuple)
  assert len(digits_config.loss.kurtosis.targets) == 19
  with pytest.raises(TypeError):
    digits_config.loss.kurtosis.target = [1.4] * 19  # ml_collections: a float field
  digits_config.loss.kurtosis.targets = ()
  assert objective.kurtosis_targets(digits_config.loss.kurtosis, RESNET18) == 1.8


def test_summary_lists_the_kurtosis_layers_in_order(digits_config):
  from bmd_jax.tools import summary
  model, shape = narrow_model("resnet18")
  s = summary.summarize(model, (1, *shape))
  assert s.kurtosis_layers == RESNET18
  s.kurtosis_targets = tuple(range(19))
  table = s.table().splitlines()
  start = next(i for i, line in enumerate(table) if line.startswith("Kurtosis term: 19 layers"))
  assert [line.split()[1] for line in table[start + 1:]] == RESNET18
  assert table[start + 6].split() == ["5", "stage2_block0/downsample_conv/kernel", "target", "5"]


class _SideBranch(nn.Module):
  """A shortcut branch under an unrelated name: a marked binary conv and its BN."""

  @nn.compact
  def __call__(self, x, train):
    x = BinaryConv(8, (1, 1), shortcut=True, name="conv")(x)
    return nn.BatchNorm(use_running_average=not train, name="bn")(x)


class _MarkedNotNamed(nn.Module):
  """Shortcuts known by their mark only: ``proj`` and ``side`` are marked (and called first),
  ``shortcut_like`` is an ordinary conv with a shortcut-like name."""

  @nn.compact
  def __call__(self, x, train=False):
    x = Conv(4, (3, 3), name="stem")(x)
    residual = Conv(8, (1, 1), shortcut=True, name="proj")(x)
    residual = residual + _SideBranch(name="side")(x, train)
    y = BinaryConv(8, name="shortcut_like")(x)
    return BinaryConv(8, name="conv")(y) + residual


def test_shortcuts_are_the_marked_convs_whatever_their_names():
  model, shape = _MarkedNotNamed(), (8, 8, 3)
  assert models.kurtosis_layers(model, shape) == [
      "shortcut_like/latent_kernel", "conv/latent_kernel",  # the marked ones after their siblings
      "proj/kernel", "side/conv/latent_kernel"]
  assert models.kurtosis_layers(model, shape, include_shortcuts=False) == [
      "shortcut_like/latent_kernel", "conv/latent_kernel"]


def test_wdm_layers_leave_out_the_marked_binarized_convs():
  model, shape = _MarkedNotNamed(), (8, 8, 3)
  assert models.wdm_layers(model, shape) == ["conv/latent_kernel", "shortcut_like/latent_kernel"]
  assert models.wdm_layers(model, shape, include_shortcuts=True) == [
      "conv/latent_kernel", "shortcut_like/latent_kernel", "side/conv/latent_kernel"]
  params = _random_params(model, shape)
  student = _random_params(model, shape, seed=1)
  layers = models.wdm_layers(model, shape)
  kept = ("conv", "shortcut_like")
  np.testing.assert_allclose(  # the list, not the names, picks what WDM compares
      losses.wdm_loss(params, student, layers=layers),
      losses.wdm_loss({k: params[k] for k in kept}, {k: student[k] for k in kept},
                      include_shortcuts=True), rtol=1e-6)


# --- a layer's own choice: its field `regularize` ----------------------------------------------

class _OwnChoices(nn.Module):
  """A user's network: the stem opts in, `b` opts out, a shortcut opts in past
  include_shortcuts=False, a real conv opts out, a binary dense layer opts in."""

  @nn.compact
  def __call__(self, x, train=False):
    x = Conv(4, (3, 3), regularize=True, name="stem")(x)
    residual = BinaryConv(8, (1, 1), shortcut=True, regularize=True, name="proj")(x)
    y = BinaryConv(8, name="a")(x)
    y = BinaryConv(8, regularize=False, name="b")(y)
    y = Conv(8, (3, 3), regularize=False, name="real")(y)
    y = BinaryConv(8, name="c")(y) + residual
    y = BinaryDense(3, regularize=True, name="head")(y.mean(axis=(1, 2)))
    return BinaryDense(3, name="plain_head")(y)


def test_a_layer_mark_overrides_the_rule_in_both_lists():
  model, shape = _OwnChoices(), (8, 8, 3)
  expected = ["stem/kernel", "a/latent_kernel", "c/latent_kernel", "head/latent_kernel",
              "proj/latent_kernel"]  # a shortcut after its siblings, as the rule orders it
  assert models.kurtosis_layers(model, shape) == expected
  assert models.kurtosis_layers(model, shape, include_shortcuts=False) == expected
  # WDM: the binarized layers in sorted order, `b` out, the marked real stem in.
  assert models.wdm_layers(model, shape) == [
      "a/latent_kernel", "c/latent_kernel", "head/latent_kernel", "plain_head/latent_kernel",
      "proj/latent_kernel", "stem/kernel"]
  # The conv list itself is unchanged by marks: every conv, the dense layers not among them.
  assert models.conv_kernel_paths(model, shape) == [
      "stem/kernel", "a/latent_kernel", "b/latent_kernel", "real/kernel", "c/latent_kernel",
      "proj/latent_kernel"]


def test_layers_are_unmarked_by_default():
  # None: the rule decides, so the registered models' lists above are the rule's.
  assert [regularize_mark(m) for m in (
      Conv(1, (3, 3)), BinaryConv(1), BinaryDense(1))] == [None, None, None]
  assert regularize_mark(BinaryDense(1, regularize=False)) is False


def test_every_layer_opted_out_is_an_error_naming_the_mark():
  class AllOut(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = Conv(4, (3, 3), name="stem")(x)
      return BinaryConv(4, regularize=False, name="only")(x)

  with pytest.raises(ValueError, match="regularize=True"):
    models.kurtosis_layers(AllOut(), (8, 8, 3))
  with pytest.raises(ValueError, match="regularize=False"):
    models.wdm_layers(AllOut(), (8, 8, 3))
