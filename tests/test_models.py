"""Tests of the model zoo: forward/backward, binary operands, parameter counts, precisions.

CIFAR models run at 32x32, the ImageNet models at 32x32 too (their layout only needs the
size to halve five times), batch 2, to keep the file fast on a 2-core CPU.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax import layers, models

# name -> (constructor kwargs, input shape)
CASES = {
    "small_cnn": ({}, (2, 8, 8, 1)),
    "resnet20": ({}, (2, 32, 32, 3)),
    "resnet18_cifar": ({}, (2, 32, 32, 3)),
    "vgg_small": ({}, (2, 32, 32, 3)),
    "resnet18": ({}, (2, 32, 32, 3)),
    "resnet18_react": ({"react": True}, (2, 32, 32, 3)),
    "resnet34": ({"react": True}, (2, 32, 32, 3)),
    "reactnet_a": ({}, (2, 32, 32, 3)),
}
NUM_CLASSES = 10


def build(case, **overrides):
  kwargs, shape = CASES[case]
  name = case.removesuffix("_react")
  return models.get_model(name, num_classes=NUM_CLASSES, **{**kwargs, **overrides}), shape


def images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_variables(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_registry():
  assert set(CASES) - {"resnet18_react"} <= set(models.list_models())
  with pytest.raises(ValueError, match="unknown model"):
    models.get_model("resnet19")
  with pytest.raises(ValueError, match="does not accept"):
    models.get_model("resnet20", react=True)


def test_from_config_builds_the_named_model():
  model = models.from_config({"name": "resnet18", "react": True, "dtype": "bfloat16"},
                             num_classes=7, precision="full")
  assert (model.react, model.dtype, model.num_classes, model.precision) == (
      True, jnp.bfloat16, 7, "full")


# --- forward and backward -----------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_backward_under_jit(case):
  """Params initialized in step 1 (binary activations) train the step-2 (binary) model."""
  step1, shape = build(case, precision="binary_activations")
  model, _ = build(case, precision="binary")
  variables = jax.jit(lambda x: step1.init(jax.random.key(1), x, train=False))(images(shape))
  labels = jnp.arange(shape[0]) % NUM_CLASSES

  @jax.jit
  def loss_and_grad(params, batch_stats, x):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
      one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
      return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), (logits, updates)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, (logits, updates)), grads = loss_and_grad(
      variables["params"], variables["batch_stats"], images(shape, seed=2))
  assert logits.shape == (shape[0], NUM_CLASSES) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(float(loss))
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads), sep="/")
  assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())
  # The surrogate gradients reach every binary layer's latent kernel and the first conv.
  for path, g in flat.items():
    if path.endswith("latent_kernel") or path.startswith("stem_conv"):
      assert np.abs(np.asarray(g)).max() > 0, path
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)),
                                 updates["batch_stats"], variables["batch_stats"])
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


def capture_layer_calls(model, variables, x):
  """Runs the model eagerly and records each conv/dense call and each binarization in it."""
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    module, method = context.module, context.method_name
    if method == "binary_operands":  # runs inside the BinaryConv call recorded last
      calls[-1]["operands"] = next_fun(*args, **kwargs)
      return calls[-1]["operands"]
    if method != "__call__" or not isinstance(
        module, (nn.Conv, nn.Dense, layers.BinaryConv, layers.BinaryDense)):
      return next_fun(*args, **kwargs)
    entry = {"module": module, "path": "/".join(module.path), "input": args[0]}
    calls.append(entry)
    entry["output"] = next_fun(*args, **kwargs)
    entry["latent"] = module.variables["params"].get("latent_kernel")
    return entry["output"]

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=False)
  return calls


EXPECTED_BINARY_CONVS = {  # independent count from each architecture's definition
    "small_cnn": 3,
    "resnet20": 2 * 9,
    "resnet18_cifar": 2 * 8 + 3,  # + 3 binary 1x1 shortcut convs
    "vgg_small": 5,
    "resnet18": 2 * 8,
    "resnet18_react": 2 * 8,
    "resnet34": 2 * 16,
    "reactnet_a": 13 + 13 + 5,  # 3x3 and 1x1 per block, 5 reduction blocks duplicate the 1x1
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_binary_convs_see_pm1_operands(case):
  model, shape = build(case, precision="binary")
  variables = model.init(jax.random.key(3), images(shape), train=False)
  calls = capture_layer_calls(model, variables, images(shape, seed=4))
  binary = [c for c in calls if isinstance(c["module"], layers.BinaryConv)]
  real = [c for c in calls if not isinstance(c["module"], layers.BinaryConv)]
  assert len(binary) == EXPECTED_BINARY_CONVS[case]

  for c in binary:
    x_b, k_b = (np.asarray(a) for a in c["operands"])
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


def cifar_resnet_count(widths, blocks, shortcut_b):
  total = conv(3, 3, widths[0]) + bn(widths[0])
  cin = widths[0]
  for width, n in zip(widths, blocks):
    for _ in range(n):
      total += conv(3, cin, width) + conv(3, width, width) + 2 * bn(width)
      if shortcut_b and cin != width:
        total += conv(1, cin, width) + bn(width)
      cin = width
  return total + dense(widths[-1], NUM_CLASSES)


def bireal_count(blocks, react):
  total = conv(7, 3, 64) + bn(64)
  cin = 64
  for width, n in zip((64, 128, 256, 512), blocks):
    for _ in range(n):
      for unit_in in (cin, width):
        total += conv(3, unit_in, width) + bn(width)
        total += (unit_in + 3 * width) if react else 0  # RSign shift, RPReLU (2 shifts, slope)
      if cin != width:
        total += conv(1, cin, width) + bn(width)  # downsample
      cin = width
  return total + dense(512, NUM_CLASSES)


def reactnet_a_count():
  total = conv(3, 3, 32) + bn(32)
  cin = 32
  for cout in (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024):
    total += conv(3, cin, cin) + bn(cin) + cin + 3 * cin  # 3x3: conv, BN, RSign, RPReLU
    copies = cout // cin  # 1 or 2 pointwise convs of cin -> cin
    total += copies * (conv(1, cin, cin) + bn(cin)) + cin + 3 * cout  # 1x1 + RSign + RPReLU
    cin = cout
  return total + dense(1024, NUM_CLASSES)


EXPECTED_PARAMS = {
    "small_cnn": conv(3, 1, 32) + bn(32) + conv(3, 32, 64) + conv(3, 64, 64)
                 + conv(3, 64, 128) + bn(64) * 2 + bn(128) + dense(128, NUM_CLASSES),
    "resnet20": cifar_resnet_count((16, 32, 64), (3, 3, 3), shortcut_b=False),
    "resnet18_cifar": cifar_resnet_count((64, 128, 256, 512), (2, 2, 2, 2), shortcut_b=True),
    "vgg_small": conv(3, 3, 128) + conv(3, 128, 128) + conv(3, 128, 256) + conv(3, 256, 256)
                 + conv(3, 256, 512) + conv(3, 512, 512)
                 + bn(128) * 2 + bn(256) * 2 + bn(512) * 2 + dense(512 * 4 * 4, NUM_CLASSES),
    "resnet18": bireal_count((2, 2, 2, 2), react=False),
    "resnet18_react": bireal_count((2, 2, 2, 2), react=True),
    "resnet34": bireal_count((3, 4, 6, 3), react=True),
    "reactnet_a": reactnet_a_count(),
}


def test_parameter_counts_of_the_papers():
  # The well-known totals, with the 10-class classifiers swapped for 1000-class ones.
  assert EXPECTED_PARAMS["resnet20"] == 269_722  # "0.27M"
  assert bireal_count((2, 2, 2, 2), False) - dense(512, 10) + dense(512, 1000) == 11_689_512
  assert bireal_count((3, 4, 6, 3), False) - dense(512, 10) + dense(512, 1000) == 21_797_672
  assert round(reactnet_a_count() - dense(1024, 10) + dense(1024, 1000), -5) == 29_300_000


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_count_matches_architecture(case):
  model, shape = build(case)
  assert count(abstract_variables(model, shape)["params"]) == EXPECTED_PARAMS[case]


# --- one parameter tree for the three precisions ------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_same_variables_in_every_precision(case):
  trees = [abstract_variables(build(case, precision=p)[0], CASES[case][1])
           for p in layers.PRECISIONS]
  assert trees[0] == trees[1] == trees[2]


def test_step1_params_load_unchanged_into_step2():
  step1, shape = build("reactnet_a", precision="binary_activations")
  step2, _ = build("reactnet_a", precision="binary")
  variables = step1.init(jax.random.key(5), images(shape), train=False)
  x = images(shape, seed=6)
  out1 = step1.apply(variables, x, train=False)
  out2 = step2.apply(variables, x, train=False)
  assert np.isfinite(np.asarray(out2)).all()
  assert not np.allclose(out1, out2)  # the switch binarizes the weights, nothing else changes
  full, _ = build("reactnet_a", precision="full")
  assert not np.allclose(full.apply(variables, x, train=False), out1)
