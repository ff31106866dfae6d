"""The CIFAR networks are IR-Net's: parameter counts of the originals, and forward passes equal to
an independent transcription of IR-Net's PyTorch definitions (CIFAR-10/ResNet20/1w1a/resnet.py,
CIFAR-10/ResNet18/resnet.py in htqin/IR-Net), written here with lax ops on the parameter tree.

The whole-network comparisons run in precision 'full' (the topology: where the shortcuts,
hardtanhs and batch norms are); which layers binarize is checked on the binary model. Each runs
jitted once with cheap code generation: on a 2-core CPU that is seconds, eager dispatch is not.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax import models
from narrow_models import FAST_COMPILE, NARROW_RESNET

# Counted on the PyTorch originals (sum of p.numel() over model.parameters()), 10 classes.
ORIGINAL_PARAMS = {"resnet20": 269_850, "resnet18_cifar": 11_174_986, "vgg_small": 4_660_106}


def abstract(model, shape=(1, 32, 32, 3)):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("name", sorted(ORIGINAL_PARAMS))
def test_parameter_count_is_the_originals(name):
  params = abstract(models.get_model(name, num_classes=10))["params"]
  assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)) \
      == ORIGINAL_PARAMS[name]


def test_resnet18_cifar_blocks_and_shortcuts():
  flat = flax.traverse_util.flatten_dict(
      abstract(models.get_model("resnet18_cifar"))["params"], sep="/")
  blocks = sorted({k.split("/")[0] for k in flat if k.startswith("stage")})
  assert len(blocks) == 8
  # Two binary 3x3 convs a block; one real 1x1 conv + BN shortcut where the shape changes.
  binary = [k for k in flat if k.endswith("latent_kernel")]
  assert binary == [f"{b}/conv{i}/latent_kernel" for b in blocks for i in (1, 2)]
  shortcuts = {k: v.shape for k, v in flat.items() if "/shortcut/" in k}
  assert shortcuts == {
      f"stage{s}_block0/shortcut/{leaf}": shape
      for s, cin, cout in ((2, 64, 128), (3, 128, 256), (4, 256, 512))
      for leaf, shape in (("conv/kernel", (1, 1, cin, cout)), ("bn/scale", (cout,)),
                          ("bn/bias", (cout,)))}
  assert flat["classifier_bn/scale"].shape == (512,)  # BatchNorm1d before the classifier


# --- independent forward passes ----------------------------------------------------------------

def random_variables(model, seed=0):
  """The model's tree with random values, BN statistics away from their init."""
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = path[-1].key
    if name == "kernel" or name == "latent_kernel":
      return rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return 0.2 * rng.standard_normal(leaf.shape)

  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(value(p, leaf), jnp.float32), abstract(model))


def run(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def conv(x, w, stride, pad):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bn(x, params, stats):
  """PyTorch's eval-mode BatchNorm (eps 1e-5)."""
  return (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


def hardtanh(x):
  return jnp.clip(x, -1, 1)


def irnet_resnet(v, x, widths, stage_sizes, block):
  """IR-Net's ResNet forward, real-valued, from the tree `v` ({'params', 'batch_stats'})."""
  p, s = v["params"], v["batch_stats"]
  out = bn(conv(x, p["stem_conv"]["kernel"], 1, 1), p["stem_bn"], s["stem_bn"])
  if block == "per_conv":  # ResNet-20: hardtanh after the stem; ResNet-18: none
    out = hardtanh(out)
  cin = widths[0]
  for stage, (n, planes) in enumerate(zip(stage_sizes, widths)):
    for i in range(n):
      stride = 2 if stage > 0 and i == 0 else 1
      name = f"stage{stage + 1}_block{i}"
      bp, bs = p[name], s[name]
      if block == "per_conv":  # BasicBlock_1w1a, option A
        shortcut = out
        if stride != 1 or cin != planes:
          shortcut = jnp.pad(out[:, ::2, ::2, :],
                             ((0, 0), (0, 0), (0, 0), (planes // 4, planes // 4)))
        y = hardtanh(bn(conv(out, bp["conv1"]["latent_kernel"], stride, 1), bp["bn1"], bs["bn1"])
                     + shortcut)
        out = hardtanh(bn(conv(y, bp["conv2"]["latent_kernel"], 1, 1), bp["bn2"], bs["bn2"]) + y)
      else:  # the standard BasicBlock, Conv2d 1x1 + BatchNorm2d shortcut
        y = hardtanh(bn(conv(out, bp["conv1"]["latent_kernel"], stride, 1), bp["bn1"], bs["bn1"]))
        y = bn(conv(y, bp["conv2"]["latent_kernel"], 1, 1), bp["bn2"], bs["bn2"])
        shortcut = out
        if stride != 1 or cin != planes:
          sc = bp["shortcut"]
          shortcut = bn(conv(out, sc["conv"]["kernel"], stride, 0), sc["bn"],
                        bs["shortcut"]["bn"])
        out = hardtanh(y + shortcut)
      cin = planes
  pooled = bn(out.mean(axis=(1, 2)), p["classifier_bn"], s["classifier_bn"])  # BatchNorm1d
  return pooled @ p["classifier"]["kernel"] + p["classifier"]["bias"]


CASES = {  # name -> (widths, stage sizes, block)
    "resnet20": ((16, 32, 64), (3, 3, 3), "per_conv"),
    "resnet18_cifar": (NARROW_RESNET, (2, 2, 2, 2), "basic"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_is_irnets(name):
  widths, stage_sizes, block = CASES[name]
  model = models.get_model(name, widths=widths, precision="full")
  v = random_variables(model)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  got, expected = run(lambda v, x: (model.apply(v, x, train=False),
                                    irnet_resnet(v, x, widths, stage_sizes, block)), v, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4,
                             atol=1e-4 * float(jnp.abs(expected).max()))


def test_binary_resnet18_cifar_shortcut_stays_real():
  """In the binary network the shortcut convolves the block's real input with its real kernel."""
  model = models.get_model("resnet18_cifar", widths=NARROW_RESNET, precision="binary")
  v = random_variables(model, seed=2)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  seen = run(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                      mutable=["intermediates"])[1]["intermediates"], v, x)
  for stage in (2, 3, 4):
    block_in = seen[f"stage{stage - 1}_block1"]["__call__"][0]
    assert not set(np.unique(np.asarray(block_in))) <= {-1.0, 1.0}
    sc_params = v["params"][f"stage{stage}_block0"]["shortcut"]
    sc_stats = v["batch_stats"][f"stage{stage}_block0"]["shortcut"]
    expected = bn(conv(block_in, sc_params["conv"]["kernel"], 2, 0), sc_params["bn"],
                  sc_stats["bn"])
    got = seen[f"stage{stage}_block0"]["shortcut"]["__call__"][0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
