"""Tests of the model zoo: forward/backward, binary operands, parameter counts, precisions.

Parameter counts are checked at the papers' sizes by tracing each model's ``init``
(``jax.eval_shape``, nothing is computed). The forward/backward and binary-operand checks run
each architecture's code at reduced widths (the same layers and layout, fewer channels), CIFAR
models at 32x32 and ImageNet models at 64x64, batch 2, in one jitted train step per model whose
compilation is most of this file's time on a 2-core CPU.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.core import layers
from bmd_jax import models
from narrow_models import (CASES, FAST_COMPILE, NARROW_REACTNET, NARROW_RESNET, NARROW_VGG,
                           abstract_variables, initial_variables)

NUM_CLASSES = 10


def test_every_registered_model_has_a_test_case():
  assert sorted(CASES) == models.list_models(binary_only=True)


LAYER_TYPES = (nn.Conv, nn.Dense, layers.BinaryConv, layers.BinaryDense)
# XLA:CPU compiles every fusion of a train step through LLVM, seconds per model on a 2-core
# machine; these models run once on tiny inputs, so the cheapest code generation is best
# (about 3x less compile time than the defaults).


def build(case, **overrides):
  name, kwargs, shape = CASES[case]
  return models.get_model(name, num_classes=NUM_CLASSES, **{**kwargs, **overrides}), shape


def images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_registry():
  assert {name for name, _, _ in CASES.values()} == set(models.list_models(binary_only=True))
  with pytest.raises(ValueError, match="unknown model"):
    models.get_model("resnet19")
  with pytest.raises(ValueError, match="does not accept"):
    models.get_model("resnet20", react=True)


def test_from_config_builds_the_named_model():
  model = models.from_config({"name": "resnet18", "react": True, "dtype": "bfloat16"},
                             num_classes=7, precision="full")
  assert (model.react, model.dtype, model.num_classes, model.precision) == (
      True, jnp.bfloat16, 7, "full")


# --- one jitted train-mode step per model, shared by the tests below ---------------------------

@functools.lru_cache(maxsize=None)
def binary_step(case):
  """Loss and gradient of the binary model from step-1 (binary activations) variables, jitted.

  Also returns, for every conv/dense call, what it received and computed (captured while
  tracing, returned as outputs of the jitted function) and the module that made it.
  """
  step1, shape = build(case, precision="binary_activations")
  model, _ = build(case, precision="binary")
  variables = initial_variables(step1, shape, seed=1)
  labels = jnp.arange(shape[0]) % NUM_CLASSES
  layer_info = []  # filled while tracing: (path, module) of every conv/dense call

  def loss_fn(params, batch_stats, x):
    arrays = []

    def capture(next_fun, args, kwargs, context):
      module, method = context.module, context.method_name
      if method == "binary_operands":  # runs inside the BinaryConv call recorded last
        arrays[-1]["operands"] = next_fun(*args, **kwargs)
        return arrays[-1]["operands"]
      if method != "__call__" or not isinstance(module, LAYER_TYPES):
        return next_fun(*args, **kwargs)
      entry = {"input": args[0]}
      layer_info.append(("/".join(module.path), module))
      arrays.append(entry)
      entry["output"] = next_fun(*args, **kwargs)
      entry["latent"] = module.variables["params"].get("latent_kernel")
      return entry["output"]

    with nn.intercept_methods(capture):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
    loss = -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1))
    return loss, (logits, updates, arrays)

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  args = (variables["params"], variables["batch_stats"], images(shape, seed=2))
  (loss, (logits, updates, arrays)), grads = step.lower(*args).compile(
      compiler_options=FAST_COMPILE)(*args)
  calls = [{"path": path, "module": module, **jax.tree_util.tree_map(np.asarray, a)}
           for (path, module), a in zip(layer_info, arrays)]
  return dict(variables=variables, loss=float(loss), logits=np.asarray(logits),
              updates=updates, grads=grads, calls=calls, shape=shape)


# The largest compiles (over 4 s each on 2 cores) run in the slow tier only.
HEAVY_CASES = ("reactnet_a", "resnet18_cifar", "resnet18", "resnet34")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in HEAVY_CASES
                                  else c for c in sorted(CASES)])
def test_forward_backward_under_jit(case):
  """Params initialized in step 1 (binary activations) run and train the binary model."""
  r = binary_step(case)
  variables, grads = r["variables"], r["grads"]
  assert r["logits"].shape == (r["shape"][0], NUM_CLASSES) and r["logits"].dtype == np.float32
  assert np.isfinite(r["logits"]).all() and np.isfinite(r["loss"])
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads), sep="/")
  assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())
  # The surrogate gradients reach every binary layer's latent kernel and the first conv.
  for path, g in flat.items():
    if path.endswith("latent_kernel") or path.startswith("stem_conv"):
      assert np.abs(np.asarray(g)).max() > 0, path
  # Train mode updates every BN's running statistics.
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)),
                                 r["updates"]["batch_stats"], variables["batch_stats"])
  assert all(jax.tree_util.tree_leaves(moved))


# --- binary operands --------------------------------------------------------------------------

def np_sign(x):
  return np.where(np.asarray(x) >= 0, 1.0, -1.0)


def np_binary_kernel(w, scale_mode):
  """Independent reference of the scaled binary kernel (HWIO, scale per output channel)."""
  w = np.asarray(w, np.float64)
  axes = tuple(range(w.ndim - 1))
  if scale_mode == "mean_abs":
    return np.mean(np.abs(w), axis=axes) * np_sign(w)
  assert scale_mode == "irnet"
  n = w.size // w.shape[-1]
  centered = w - w.mean(axis=axes)
  w_hat = centered / np.sqrt((centered ** 2).sum(axis=axes) / (n - 1))
  return 2.0 ** np.round(np.log2(np.mean(np.abs(w_hat), axis=axes))) * np_sign(w_hat)


EXPECTED_BINARY_CONVS = {  # independent count from each architecture's definition
    "small_cnn": 3,
    "resnet20": 2 * 9,
    "resnet18_cifar": 2 * 8,  # its 3 1x1 shortcut convs are real
    "vgg_small": 5,
    "resnet18": 2 * 8,
    "resnet34": 2 * 16,
    "reactnet_a": 13 + 13 + 5,  # 3x3 and 1x1 per block, 5 reduction blocks duplicate the 1x1
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in HEAVY_CASES
                                  else c for c in sorted(CASES)])
def test_binary_convs_see_pm1_operands(case):
  calls = binary_step(case)["calls"]
  binary = [c for c in calls if isinstance(c["module"], layers.BinaryConv)]
  real = [c for c in calls if not isinstance(c["module"], layers.BinaryConv)]
  assert len(binary) == EXPECTED_BINARY_CONVS[case]

  for c in binary:
    x_b, k_b = c["operands"]
    x_ref = np_sign(c["input"])
    k_ref = np_binary_kernel(c["latent"], c["module"].scale_mode)
    assert set(np.unique(x_b)) <= {-1.0, 1.0}, c["path"]
    np.testing.assert_array_equal(x_b, x_ref, err_msg=c["path"])
    # +-alpha per output channel, alpha > 0: the same magnitude down each output channel.
    magnitude = np.abs(k_b).reshape(-1, k_b.shape[-1])
    assert (magnitude > 0).all() and (magnitude == magnitude[:1]).all(), c["path"]
    np.testing.assert_allclose(k_b, k_ref, rtol=1e-6, err_msg=c["path"])
    # The conv computes with exactly these operands.
    m = c["module"]
    strides = (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides)
    expected = jax.lax.conv_general_dilated(
        jnp.asarray(x_ref, jnp.float32), jnp.asarray(k_ref, jnp.float32), strides, m.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(c["output"], expected, rtol=1e-5, atol=1e-4, err_msg=c["path"])

  # First conv, classifier and real downsample convs get real-valued inputs.
  paths = [c["path"] for c in real]
  assert paths[0] == "stem_conv" and paths[-1] == "classifier"
  for c in real:
    assert not set(np.unique(np.asarray(c["input"]))) <= {-1.0, 1.0}, c["path"]
    assert "kernel" in c["module"].variables["params"], c["path"]


# --- parameter counts -------------------------------------------------------------------------

def bn(c):
  return 2 * c  # scale and bias


def conv(k, cin, cout):
  return k * k * cin * cout


def dense(cin, cout):
  return cin * cout + cout


def cifar_resnet_count(widths, blocks, projection_shortcuts):
  total = conv(3, 3, widths[0]) + bn(widths[0])  # stem
  cin = widths[0]
  for width, n in zip(widths, blocks):
    for _ in range(n):
      total += conv(3, cin, width) + conv(3, width, width) + 2 * bn(width)
      if projection_shortcuts and cin != width:
        total += conv(1, cin, width) + bn(width)  # real 1x1 shortcut
      cin = width
  return total + bn(widths[-1]) + dense(widths[-1], NUM_CLASSES)  # BatchNorm1d, classifier


def vgg_small_count(widths, image_size):
  total, cin = 0, 3
  for width in widths:
    total += conv(3, cin, width) + bn(width)
    cin = width
  return total + dense(widths[-1] * (image_size // 8) ** 2, NUM_CLASSES)  # 3 max pools


def bireal_count(widths, blocks, react):
  total = conv(7, 3, widths[0]) + bn(widths[0])  # stem
  cin = widths[0]
  for width, n in zip(widths, blocks):
    for _ in range(n):
      for unit_in in (cin, width):  # two binary 3x3 convs a block
        total += conv(3, unit_in, width) + bn(width)
        total += (unit_in + 3 * width) if react else 0  # RSign shift; RPReLU: 2 shifts, slope
      if cin != width:
        total += conv(1, cin, width) + bn(width)  # real downsample
      cin = width
  return total + dense(widths[-1], NUM_CLASSES)


def reactnet_a_count(stem_width, block_widths):
  total = conv(3, 3, stem_width) + bn(stem_width)
  cin = stem_width
  for cout in block_widths:
    total += conv(3, cin, cin) + bn(cin) + cin + 3 * cin  # 3x3: conv, BN, RSign, RPReLU
    copies = cout // cin  # 1 or 2 pointwise convs of cin -> cin, each with its BN
    total += copies * (conv(1, cin, cin) + bn(cin)) + cin + 3 * cout  # + RSign, RPReLU
    cin = cout
  return total + dense(block_widths[-1], NUM_CLASSES)


REACTNET_A = dict(stem_width=32, block_widths=(64, 128, 128, 256, 256) + (512,) * 6 + (1024,) * 2)
PAPER_SIZE = {  # case -> (count at the papers' widths, count of the narrow test model)
    "small_cnn": (conv(3, 1, 32) + bn(32) + conv(3, 32, 64) + conv(3, 64, 64) + conv(3, 64, 128)
                  + 2 * bn(64) + bn(128) + dense(128, NUM_CLASSES),) * 2,
    "resnet20": (cifar_resnet_count((16, 32, 64), (3, 3, 3), False),) * 2,
    "resnet18_cifar": (cifar_resnet_count((64, 128, 256, 512), (2, 2, 2, 2), True),
                       cifar_resnet_count(NARROW_RESNET, (2, 2, 2, 2), True)),
    "vgg_small": (vgg_small_count((128, 128, 256, 256, 512, 512), 32),
                  vgg_small_count(NARROW_VGG, 32)),
    "resnet18": (bireal_count((64, 128, 256, 512), (2, 2, 2, 2), True),
                 bireal_count(NARROW_RESNET, (2, 2, 2, 2), True)),
    "resnet34": (bireal_count((64, 128, 256, 512), (3, 4, 6, 3), False),
                 bireal_count(NARROW_RESNET, (3, 4, 6, 3), False)),
    "reactnet_a": (reactnet_a_count(**REACTNET_A), reactnet_a_count(**NARROW_REACTNET)),
}


def with_1000_classes(n, features):
  return n - dense(features, NUM_CLASSES) + dense(features, 1000)


def test_counts_agree_with_the_papers():
  # IR-Net's CIFAR ResNet-20 and ResNet-18: the usual 269,722 and 11,173,962 ("0.27M",
  # "11.2M") plus the BatchNorm1d before the classifier.
  assert PAPER_SIZE["resnet20"][0] == 269_850
  assert PAPER_SIZE["resnet18_cifar"][0] == 11_174_986
  # torchvision's ResNet-18/34 have 11,689,512 / 21,797,672: Bi-Real's avg-pool downsample
  # keeps their parameter count.
  assert with_1000_classes(bireal_count((64, 128, 256, 512), (2, 2, 2, 2), False), 512) \
      == 11_689_512
  assert with_1000_classes(PAPER_SIZE["resnet34"][0], 512) == 21_797_672
  assert round(with_1000_classes(PAPER_SIZE["reactnet_a"][0], 1024), -5) == 29_300_000


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "reactnet_a"
                                  else c for c in sorted(CASES)])
def test_parameter_count_matches_architecture(case):
  """At the papers' widths (traced only) and at the test widths (the initialized model)."""
  name, kwargs, shape = CASES[case]
  full = models.get_model(name, num_classes=NUM_CLASSES,
                          **{k: v for k, v in kwargs.items() if k == "react"})
  assert count(abstract_variables(full, shape)["params"]) == PAPER_SIZE[case][0]
  assert count(binary_step(case)["variables"]["params"]) == PAPER_SIZE[case][1]


# --- one parameter tree for the three precisions ------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_same_variables_in_every_precision(case):
  step1, step2 = (abstract_variables(*build(case, precision=p))
                  for p in ("binary_activations", "binary"))
  assert step1 == step2
  if case == "reactnet_a":  # the richest tree (RSign, RPReLU, duplicated 1x1 convs)
    assert abstract_variables(*build(case, precision="full")) == step2


@pytest.mark.slow  # over 3.5 s on 2 cores: the fast tier stays under 3 minutes
def test_step1_params_load_unchanged_into_step2():
  """The step-1 variables apply as they are in step 2; only the precision switch differs.

  (test_forward_backward_under_jit trains every binary model from step-1 variables.)
  """
  variables = binary_step("small_cnn")["variables"]
  x = images(CASES["small_cnn"][2], seed=6)
  out = {p: np.asarray(build("small_cnn", precision=p)[0].apply(variables, x, train=False))
         for p in layers.PRECISIONS}
  assert all(np.isfinite(o).all() for o in out.values())
  assert not np.allclose(out["binary_activations"], out["binary"])
  assert not np.allclose(out["binary_activations"], out["full"])


@pytest.mark.parametrize("barrier", [False, True])
def test_binary_fields_reach_every_binary_layer(barrier):
  """A network's binary fields (declared once, layers.BinaryFields) are every layer's."""
  registered, kwargs, shape = CASES["resnet18_cifar"]
  model = models.get_model(registered, num_classes=NUM_CLASSES, precision="binary_activations",
                           store_binary_input=barrier, scale_mode="none", **kwargs)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (layers.BinaryConv, layers.BinaryDense)):
      seen.append(layers.binary_fields(context.module))
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  with nn.intercept_methods(record):
    lowered = jax.jit(model.apply).lower(variables, x)
  assert seen and all(f == layers.binary_fields(model) for f in seen)
  assert all(f["store_binary_input"] == barrier and f["scale_mode"] == "none" for f in seen)
  assert ("optimization_barrier" in lowered.as_text()) == barrier
