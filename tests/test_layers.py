"""Tests for bmd_jax.core.layers: BinaryConv / BinaryDense precisions, parameters, RPReLU.

References are computed independently in the test: numpy sign with sign(0) = +1, a numpy
convolution (checked against scipy), and hand-derived gradients.
"""

import numpy as np
import pytest
import scipy.signal

import flax
import jax
import jax.numpy as jnp

from bmd_jax.core import layers
from bmd_jax.core import quantizers as q

F32 = np.float32
PRECISIONS = ("full", "binary_activations", "binary")


def _sign_np(x):
  return np.where(np.asarray(x, np.float64) >= 0, 1.0, -1.0)


def _conv_np(x, w, stride=1, padding="SAME"):
  """NHWC x HWIO cross-correlation in float64, XLA's SAME convention (extra pad at the end)."""
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  _, h, wd, _ = x.shape
  kh, kw, _, out = w.shape
  if padding == "SAME":
    pads = []
    for n, k in ((h, kh), (wd, kw)):
      n_out = -(-n // stride)
      total = max((n_out - 1) * stride + k - n, 0)
      pads.append((total // 2, total - total // 2))
  elif padding == "VALID":
    pads = [(0, 0), (0, 0)]
  else:
    pads = [tuple(p) for p in padding]
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho = (xp.shape[1] - kh) // stride + 1
  wo = (xp.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], ho, wo, out))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      y += np.einsum("nhwc,co->nhwo", patch, w[i, j])
  return y


def _mean_abs_np(w):
  w = np.asarray(w, np.float64)
  return np.abs(w.reshape(-1, w.shape[-1])).mean(0)


def _with_zeros(a, every=7):
  a = np.array(a, F32)
  a.reshape(-1)[::every] = 0.0
  return a


def _flat(params):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")


def test_numpy_conv_reference_matches_scipy():
  """The test's own conv reference agrees with scipy's correlate2d (single channel)."""
  rng = np.random.RandomState(0)
  x = rng.randn(1, 6, 7, 1)
  w = rng.randn(3, 3, 1, 1)
  got = _conv_np(x, w)[0, :, :, 0]
  ref = scipy.signal.correlate2d(x[0, :, :, 0], w[:, :, 0, 0], mode="same")
  np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
  got_valid = _conv_np(x, w, padding="VALID")[0, :, :, 0]
  np.testing.assert_allclose(got_valid, scipy.signal.correlate2d(
      x[0, :, :, 0], w[:, :, 0, 0], mode="valid"), rtol=1e-12, atol=1e-12)
  # Multi-channel: sum over input channels of per-channel correlations, stride 2.
  x = rng.randn(1, 7, 7, 2)
  w = rng.randn(3, 3, 2, 1)
  ref = sum(scipy.signal.correlate2d(x[0, :, :, c], w[:, :, c, 0], mode="same")
            for c in range(2))[::2, ::2]
  np.testing.assert_allclose(_conv_np(x, w, stride=2)[0, :, :, 0], ref, rtol=1e-12, atol=1e-12)


# --- BinaryConv forward -------------------------------------------------------------

CONV_CONFIGS = [
    dict(kernel_size=(3, 3), strides=1, padding="SAME", use_bias=False),
    dict(kernel_size=(3, 3), strides=2, padding="SAME", use_bias=True),
    dict(kernel_size=(2, 2), strides=1, padding="VALID", use_bias=False),
    dict(kernel_size=(1, 1), strides=(2, 2), padding=((1, 0), (0, 1)), use_bias=False),
]


def _conv_reference(precision, x, w, cfg, bias=None):
  strides = cfg["strides"] if isinstance(cfg["strides"], int) else cfg["strides"][0]
  if precision == "full":
    xo, wo = x, w
  elif precision == "binary_activations":
    xo, wo = _sign_np(x), w
  else:
    xo, wo = _sign_np(x), _mean_abs_np(w) * _sign_np(w)
  y = _conv_np(xo, wo, strides, cfg["padding"])
  return y if bias is None else y + bias


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=["3x3s1", "3x3s2bias", "2x2valid", "1x1pad"])
def test_binary_conv_forward_all_precisions(cfg):
  rng = np.random.RandomState(1)
  x = _with_zeros(rng.randn(2, 7, 6, 3))
  features = 4
  w = _with_zeros(rng.randn(*cfg["kernel_size"], 3, features), every=5)
  # One parameter tree, used unchanged by every precision.
  params = {"latent_kernel": jnp.asarray(w)}
  bias = None
  if cfg["use_bias"]:
    bias = rng.randn(features).astype(F32)
    params["bias"] = jnp.asarray(bias)
  models = {p: layers.BinaryConv(features=features, precision=p, **cfg) for p in PRECISIONS}
  # Its structure is what init makes (shapes only: no computation).
  init_shapes = jax.eval_shape(models["binary"].init, jax.random.PRNGKey(0), jnp.asarray(x))
  assert jax.tree_util.tree_map(lambda a: a.shape, init_shapes["params"]) == \
      jax.tree_util.tree_map(lambda a: a.shape, params)
  outs = jax.jit(lambda prm, v: {p: m.apply({"params": prm}, v) for p, m in models.items()})(
      params, jnp.asarray(x))
  for precision in PRECISIONS:
    y = outs[precision]
    ref = _conv_reference(precision, x, w, cfg, bias)
    assert y.shape == ref.shape
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-4)
  # The three precisions really compute different things.
  assert not np.allclose(outs["full"], outs["binary_activations"])
  assert not np.allclose(outs["binary_activations"], outs["binary"])


def test_binary_conv_sign_of_zero_is_plus_one():
  """All-zero input and kernel column: sign(0) = +1 everywhere (jnp.sign would give 0)."""
  x = np.zeros((1, 3, 3, 2), F32)
  model = layers.BinaryConv(features=2, kernel_size=(1, 1), precision="binary")
  w = np.array([[[[0.0, -2.0], [0.0, 1.0]]]], F32)          # (1, 1, 2 in, 2 out)
  y = model.apply({"params": {"latent_kernel": jnp.asarray(w)}}, jnp.asarray(x))
  # Channel 0: alpha 0 (mean |0|); channel 1: alpha 1.5, sign(x)=+1, sign(w)=(-1, +1) -> 0.
  np.testing.assert_allclose(np.asarray(y), np.zeros((1, 3, 3, 2)))
  w = np.array([[[[0.0, 2.0], [4.0, 1.0]]]], F32)
  y = model.apply({"params": {"latent_kernel": jnp.asarray(w)}}, jnp.asarray(x))
  # Channel 0: alpha 2, signs (+1, +1) -> 4; channel 1: alpha 1.5 -> 3.
  np.testing.assert_allclose(np.asarray(y)[0, 1, 1], [4.0, 3.0], rtol=1e-6)
  ya = layers.BinaryConv(features=2, kernel_size=(1, 1), precision="binary_activations").apply(
      {"params": {"latent_kernel": jnp.asarray(w)}}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(ya)[0, 1, 1], [4.0, 3.0], rtol=1e-6)   # 0+4, 2+1


@pytest.mark.parametrize("scale_mode", ["none", "mean_abs", "irnet"])
def test_binary_conv_scale_modes(scale_mode):
  rng = np.random.RandomState(2)
  x = _with_zeros(rng.randn(1, 5, 5, 3))
  model = layers.BinaryConv(features=3, precision="binary", scale_mode=scale_mode)
  w = (rng.randn(3, 3, 3, 3) * [0.1, 1.0, 3.0] + [0.0, 0.5, -1.0]).astype(F32)
  y = jax.jit(model.apply)({"params": {"latent_kernel": jnp.asarray(w)}}, jnp.asarray(x))
  w = w.astype(np.float64)
  flat = w.reshape(-1, w.shape[-1])
  if scale_mode == "none":
    wb = _sign_np(w)
  elif scale_mode == "mean_abs":
    wb = _mean_abs_np(w) * _sign_np(w)
  else:
    hat = (flat - flat.mean(0)) / flat.std(0, ddof=1)
    wb = (2.0 ** np.round(np.log2(np.abs(hat).mean(0))) * _sign_np(hat)).reshape(w.shape)
  np.testing.assert_allclose(np.asarray(y, np.float64), _conv_np(_sign_np(x), wb),
                             rtol=1e-5, atol=1e-4)


# --- BinaryDense forward ------------------------------------------------------------

@pytest.mark.parametrize("use_bias", [False, True])
def test_binary_dense_forward_all_precisions(use_bias):
  rng = np.random.RandomState(3)
  x = _with_zeros(rng.randn(5, 6))
  w = _with_zeros(rng.randn(6, 4), every=5)
  params = {"latent_kernel": jnp.asarray(w)}
  b = np.zeros(4)
  if use_bias:
    b = rng.randn(4).astype(F32)
    params["bias"] = jnp.asarray(b)
  xs, ws = _sign_np(x), _sign_np(w)
  refs = {
      "full": x.astype(np.float64) @ w + b,
      "binary_activations": xs @ w + b,
      "binary": xs @ (_mean_abs_np(w) * ws) + b,
  }
  models = {p: layers.BinaryDense(features=4, precision=p, use_bias=use_bias)
            for p in PRECISIONS}
  outs = jax.jit(lambda prm, v: {p: m.apply({"params": prm}, v) for p, m in models.items()})(
      params, jnp.asarray(x))
  for precision in PRECISIONS:
    y = outs[precision]
    assert y.shape == (5, 4)
    np.testing.assert_allclose(np.asarray(y, np.float64), refs[precision], rtol=1e-5, atol=1e-5)
  assert not np.allclose(refs["full"], refs["binary_activations"])
  assert not np.allclose(refs["binary_activations"], refs["binary"])


def test_binary_dense_bfloat16():
  rng = np.random.RandomState(4)
  x = rng.randn(3, 16).astype(F32)
  model = layers.BinaryDense(features=5, precision="binary", dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(2), jnp.asarray(x))["params"]
  assert shapes["latent_kernel"].dtype == jnp.float32          # latent weights stay f32
  params = {"latent_kernel": jnp.asarray(rng.randn(16, 5).astype(F32))}
  y = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
  assert y.dtype == jnp.bfloat16
  w = np.asarray(params["latent_kernel"])
  ref = _sign_np(x) @ (_mean_abs_np(w) * _sign_np(w))
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), ref, rtol=2e-2, atol=5e-2)


# --- parameters ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_param_tree_identical_across_precisions(kind):
  for use_bias in (False, True):
    if kind == "conv":
      x = jnp.asarray(np.random.RandomState(11).randn(1, 5, 5, 3).astype(F32))
      make = lambda p: layers.BinaryConv(features=4, precision=p, use_bias=use_bias)
      kernel_shape = (3, 3, 3, 4)
    else:
      x = jnp.asarray(np.random.RandomState(11).randn(2, 3).astype(F32))
      make = lambda p: layers.BinaryDense(features=4, precision=p, use_bias=use_bias)
      kernel_shape = (3, 4)
    models = {p: make(p) for p in PRECISIONS}
    # Shapes only, no computation: random init compiles slowly on CPU (and the models'
    # tests run real inits).
    shapes = {p: jax.eval_shape(m.init, jax.random.PRNGKey(0), x) for p, m in models.items()}
    for p in PRECISIONS:
      assert jax.tree_util.tree_structure(shapes[p]) == \
          jax.tree_util.tree_structure(shapes["full"])
    # Concrete values for the "full" tree; every precision applies that same tree.
    kernel = jnp.asarray(np.random.RandomState(12).randn(*kernel_shape).astype(F32))
    tree = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 0.5, a.dtype), shapes["full"])
    tree["params"]["latent_kernel"] = kernel
    variables = {p: jax.tree_util.tree_map(lambda a, t: t, shapes[p], tree) for p in PRECISIONS}
    # The tree from each precision, unchanged, applied in every other precision.
    cross = {(pf, pt): models[pt].apply(variables[pf], x)
             for pf in PRECISIONS for pt in PRECISIONS}
    expected_keys = {"latent_kernel"} | ({"bias"} if use_bias else set())
    trees = {}
    for p in PRECISIONS:
      assert set(shapes[p]) == {"params"}
      trees[p] = _flat(shapes[p]["params"])       # what init makes for this precision
      assert set(trees[p]) == expected_keys
      assert trees[p]["latent_kernel"].shape == kernel_shape
      assert trees[p]["latent_kernel"].dtype == jnp.float32
      if use_bias:
        assert trees[p]["bias"].shape == (4,)
    for p in PRECISIONS:                          # same paths, shapes and dtypes
      for key in trees[p]:
        assert trees[p][key].shape == trees["full"][key].shape
        assert trees[p][key].dtype == trees["full"][key].dtype
    for pt in PRECISIONS:                         # identical trees give identical outputs
      for pf in PRECISIONS:
        np.testing.assert_array_equal(np.asarray(cross[(pf, pt)]),
                                      np.asarray(cross[("full", pt)]))
    assert not np.allclose(np.asarray(cross[("full", "full")]),
                           np.asarray(cross[("full", "binary")]))
    # The "full" output is the plain product with the latent kernel.
    xf = np.asarray(x, np.float64)
    ref = _conv_np(xf, kernel) if kind == "conv" else xf @ np.asarray(kernel, np.float64)
    np.testing.assert_allclose(np.asarray(cross[("binary", "full")]),
                               ref + (0.5 if use_bias else 0.0), rtol=1e-5, atol=1e-4)


def test_kernel_param_is_named_latent_kernel_inside_a_model():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = layers.BinaryConv(features=4, name="conv1")(x)
      x = layers.RPReLU(name="act")(x)
      x = x.reshape(x.shape[0], -1)
      return layers.BinaryDense(features=2, name="fc")(x)

  params = jax.eval_shape(Net().init, jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2)))["params"]
  flat = _flat(params)
  assert set(flat) == {"conv1/latent_kernel", "act/shift_in", "act/slope", "act/shift_out",
                       "fc/latent_kernel"}
  assert flat["conv1/latent_kernel"].shape == (3, 3, 2, 4)
  assert flat["fc/latent_kernel"].shape == (64, 2)
  assert not any(k.endswith("/kernel") for k in flat)


# --- estimator arguments ------------------------------------------------------------

def _ede_slope_np(v, t, k):
  return k * t * (1.0 - np.tanh(t * np.asarray(v, np.float64)) ** 2)


def test_estimator_args_reach_kernel_quantizer_dense():
  rng = np.random.RandomState(5)
  x = _with_zeros(rng.randn(4, 6))
  c = rng.randn(4, 3).astype(F32)
  model = layers.BinaryDense(features=3, precision="binary", input_quantizer="ste",
                             kernel_quantizer="ede")
  w = (rng.randn(6, 3) * 0.7).astype(F32)
  params = {"latent_kernel": jnp.asarray(w)}
  w = w.astype(np.float64)
  traces = []

  @jax.jit
  def grad_w(params, t, k):
    traces.append(1)
    loss = lambda p: jnp.sum(model.apply({"params": p}, jnp.asarray(x),
                                         estimator_args={"ede": {"t": t, "k": k}}) * c)
    return jax.grad(loss)(params)["latent_kernel"]

  grads = []
  for t, k in ((0.5, 2.0), (3.0, 1.0), (8.0, 1.0)):
    g = np.asarray(grad_w(params, jnp.float32(t), jnp.float32(k)), np.float64)
    # y = sign(x) @ (alpha * sign(W)), alpha straight through (HardBinaryConv):
    # dL/dW = sign(x)^T c * EDE', no alpha.
    expected = (_sign_np(x).T @ c) * _ede_slope_np(w, t, k)
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    grads.append(g)
  assert len(traces) == 1                          # t, k traced: no recompilation
  assert not np.allclose(grads[0], grads[1])
  assert not np.allclose(grads[1], grads[2])


def test_estimator_args_reach_kernel_quantizer_conv():
  rng = np.random.RandomState(6)
  x = rng.randn(2, 5, 5, 3).astype(F32)
  model = layers.BinaryConv(features=4, precision="binary", kernel_quantizer="ede")
  w = (rng.randn(3, 3, 3, 4) * 0.5).astype(F32)
  params = {"latent_kernel": jnp.asarray(w)}
  w = w.astype(np.float64)
  c = rng.randn(2, 5, 5, 4).astype(F32)

  @jax.jit
  def grad_w(params, t):
    loss = lambda p: jnp.sum(model.apply({"params": p}, jnp.asarray(x),
                                         estimator_args={"ede": {"t": t, "k": 1.0}}) * c)
    return jax.grad(loss)(params)["latent_kernel"]

  # dL/dW_b of a plain conv of the binarized input, by autodiff of lax's conv.
  xs = jnp.asarray(_sign_np(x), jnp.float32)
  dl_dwb = jax.grad(lambda wb: jnp.sum(jax.lax.conv_general_dilated(
      xs, wb, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) * c))(
          jnp.asarray(w, jnp.float32))
  g1, g2 = (np.asarray(grad_w(params, jnp.float32(t)), np.float64) for t in (1.0, 6.0))
  for g, t in ((g1, 1.0), (g2, 6.0)):
    expected = np.asarray(dl_dwb, np.float64) * _ede_slope_np(w, t, 1.0)  # no alpha
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  assert not np.allclose(g1, g2)


def test_mean_abs_kernel_is_react_hard_binary_conv():
  """scale_mode='mean_abs' with the clipped STE is ReActNet's HardBinaryConv: the forward uses
  alpha * sign(W) (alpha = mean |W| per output channel) and the latent kernel's gradient is
  dL/dW_b * 1{|W| <= 1}, with no alpha (alpha is detached and the clip passes the rest)."""
  rng = np.random.RandomState(11)
  x = rng.randn(2, 6, 6, 3).astype(F32)
  c = rng.randn(2, 6, 6, 4).astype(F32)
  # Channel scales far from 1 (alpha from ~0.04 to ~2.4), so a gradient scaled by alpha shows;
  # the wide channels hold many weights beyond +-1, and two sit exactly on the clip.
  w = (rng.randn(3, 3, 3, 4) * np.array([0.05, 0.3, 1.5, 3.0])).astype(F32)
  w[0, 0, 0, 2], w[1, 1, 1, 3] = 1.0, -1.0
  assert (np.abs(w) > 1).sum() > 20
  model = layers.BinaryConv(features=4, precision="binary", kernel_quantizer="ste",
                            scale_mode="mean_abs", padding=((1, 1), (1, 1)))
  loss = lambda p: jnp.sum(model.apply({"params": p}, jnp.asarray(x)) * c)
  y = model.apply({"params": {"latent_kernel": jnp.asarray(w)}}, jnp.asarray(x))
  g = jax.grad(loss)({"latent_kernel": jnp.asarray(w)})["latent_kernel"]

  alpha = np.abs(w.astype(np.float64)).reshape(-1, 4).mean(0)
  np.testing.assert_allclose(np.asarray(y, np.float64),
                             _conv_np(_sign_np(x), alpha * _sign_np(w), 1, ((1, 1), (1, 1))),
                             rtol=1e-5, atol=1e-4)
  # dL/dW_b from a plain lax convolution of the binary input (linear in W_b, so its value at
  # any W_b will do).
  dl_dwb = jax.grad(lambda wb: jnp.sum(jax.lax.conv_general_dilated(
      jnp.asarray(_sign_np(x), jnp.float32), wb, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC")) * c))(jnp.zeros_like(jnp.asarray(w)))
  expected = np.asarray(dl_dwb, np.float64) * (np.abs(w) <= 1)
  np.testing.assert_allclose(np.asarray(g, np.float64), expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())
  assert (np.asarray(g)[np.abs(w) > 1] == 0).all()
  assert (np.asarray(g)[0, 0, 0, 2] != 0) and (np.asarray(g)[1, 1, 1, 3] != 0)


@pytest.mark.parametrize("precision", ["binary_activations", "binary"])
def test_estimator_args_reach_input_quantizer(precision):
  rng = np.random.RandomState(7)
  x = rng.uniform(-1.5, 1.5, size=(4, 6)).astype(F32)
  c = rng.randn(4, 3).astype(F32)
  model = layers.BinaryDense(features=3, precision=precision, input_quantizer="ede",
                             kernel_quantizer="ste")
  w = rng.randn(6, 3).astype(F32)
  params = {"latent_kernel": jnp.asarray(w)}
  w = w.astype(np.float64)
  kernel = w if precision == "binary_activations" else _mean_abs_np(w) * _sign_np(w)
  grad_x = jax.jit(jax.grad(lambda v, t: jnp.sum(
      model.apply({"params": params}, v, estimator_args={"ede": {"t": t, "k": 1.0}}) * c)))
  gs = []
  for t in (0.5, 4.0):
    g = np.asarray(grad_x(jnp.asarray(x), jnp.float32(t)), np.float64)
    np.testing.assert_allclose(g, (c @ kernel.T) * _ede_slope_np(x, t, 1.0),
                               rtol=1e-4, atol=1e-5)
    gs.append(g)
  assert not np.allclose(gs[0], gs[1])


def test_default_quantizer_gradients_and_full_precision_gradient():
  """Clipped STE by default: d/dx passes where |x| <= 1; 'full' is a plain matmul."""
  rng = np.random.RandomState(8)
  x = rng.uniform(-2, 2, size=(5, 4)).astype(F32)
  x[0, :2] = [1.0, -1.0]
  c = rng.randn(5, 2).astype(F32)
  w = rng.uniform(-1.5, 1.5, size=(4, 2)).astype(F32)
  params = {"latent_kernel": jnp.asarray(w)}
  w = w.astype(np.float64)
  models = {p: layers.BinaryDense(features=2, precision=p) for p in PRECISIONS}

  @jax.jit
  def all_grads(v, prm):
    return {p: jax.grad(lambda a, b: jnp.sum(m.apply({"params": b}, a) * c),
                        argnums=(0, 1))(v, prm) for p, m in models.items()}

  grads = all_grads(jnp.asarray(x), params)
  for precision in PRECISIONS:
    gx, gp = grads[precision]
    if precision == "full":
      exp_x, exp_w = c @ w.T, x.astype(np.float64).T @ c
    elif precision == "binary_activations":
      exp_x = (c @ w.T) * (np.abs(x) <= 1)
      exp_w = _sign_np(x).T @ c
    else:
      exp_x = (c @ (_mean_abs_np(w) * _sign_np(w)).T) * (np.abs(x) <= 1)
      exp_w = (_sign_np(x).T @ c) * (np.abs(w) <= 1)  # HardBinaryConv: no alpha
    np.testing.assert_allclose(np.asarray(gx), exp_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gp["latent_kernel"]), exp_w, rtol=1e-5, atol=1e-5)


# --- LearnableBias and RPReLU -------------------------------------------------------

def test_learnable_bias():
  rng = np.random.RandomState(9)
  x = rng.randn(2, 3, 3, 5).astype(F32)
  mod = layers.LearnableBias()
  params = mod.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  assert set(_flat(params)) == {"bias"}
  assert params["bias"].shape == (5,)
  np.testing.assert_array_equal(np.asarray(params["bias"]), np.zeros(5))
  b = rng.randn(5).astype(F32)
  y = mod.apply({"params": {"bias": jnp.asarray(b)}}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), x + b, rtol=1e-6, atol=1e-6)
  # RSign = LearnableBias then sign, with sign(0) = +1 at the shifted threshold.
  xt = np.tile(-b, (2, 1)).astype(F32)
  xt[1] += 0.5
  ys = q.ste_sign(mod.apply({"params": {"bias": jnp.asarray(b)}}, jnp.asarray(xt)))
  np.testing.assert_array_equal(np.asarray(ys), _sign_np(xt + b))
  assert np.all(np.asarray(ys)[0] == 1.0)


def _rprelu_np(x, shift_in, slope, shift_out):
  y = np.asarray(x, np.float64) + shift_in
  y = np.where(y >= 0, y, slope * y)
  return y + shift_out


def test_rprelu_params_and_forward():
  rng = np.random.RandomState(10)
  x = rng.randn(2, 4, 4, 6).astype(F32)
  mod = layers.RPReLU()
  params = mod.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  flat = _flat(params)
  assert set(flat) == {"shift_in", "slope", "shift_out"}
  for v in flat.values():
    assert v.shape == (6,) and v.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(params["slope"]), np.full(6, 0.25, F32))
  np.testing.assert_array_equal(np.asarray(params["shift_in"]), np.zeros(6))
  np.testing.assert_array_equal(np.asarray(params["shift_out"]), np.zeros(6))
  # Default params: PReLU with slope 0.25.
  y0 = mod.apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y0), np.where(x >= 0, x, 0.25 * x), rtol=1e-6)
  shift_in = rng.randn(6).astype(F32)
  slope = np.array([0.1, -0.3, 0.0, 1.5, 0.25, 2.0], F32)
  shift_out = rng.randn(6).astype(F32)
  p = {"shift_in": jnp.asarray(shift_in), "slope": jnp.asarray(slope),
       "shift_out": jnp.asarray(shift_out)}
  y = mod.apply({"params": p}, jnp.asarray(x))
  ref = _rprelu_np(x, shift_in, slope, shift_out)
  np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-5)
  # Both branches are exercised in every channel.
  shifted = x + shift_in
  assert np.all((shifted >= 0).any(axis=(0, 1, 2))) and np.all((shifted < 0).any(axis=(0, 1, 2)))
  # slope_init is honoured.
  p2 = layers.RPReLU(slope_init=0.7).init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  np.testing.assert_allclose(np.asarray(p2["slope"]), np.full(6, 0.7), rtol=1e-7)


def test_rprelu_dense_input_and_bfloat16():
  x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], F32)
  mod = layers.RPReLU()
  params = mod.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  assert params["slope"].shape == (5,)
  y = mod.apply({"params": params}, jnp.asarray(x, jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)),
                             [[-0.5, -0.125, 0.0, 0.5, 3.0]], rtol=1e-2)


# --- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: layers.BinaryConv(features=2, precision="fp32"),
    lambda: layers.BinaryDense(features=2, precision="fp32"),
], ids=["conv", "dense"])
def test_unknown_precision_raises(make):
  x = jnp.ones((1, 4, 4, 3))
  with pytest.raises(ValueError) as info:
    jax.eval_shape(make().init, jax.random.PRNGKey(0), x)
  msg = str(info.value)
  assert "fp32" in msg
  for p in PRECISIONS:
    assert p in msg


def test_check_precision():
  for p in PRECISIONS:
    assert layers.check_precision(p) == p
  assert tuple(layers.PRECISIONS) == PRECISIONS
  with pytest.raises(ValueError):
    layers.check_precision("half")


def test_unknown_quantizer_or_scale_mode_raises():
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="quantizer"):
    jax.eval_shape(layers.BinaryDense(features=2, input_quantizer="nope").init,
                   jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="quantizer"):
    jax.eval_shape(layers.BinaryDense(features=2, kernel_quantizer="nope").init,
                   jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="scale_mode"):
    jax.eval_shape(layers.BinaryDense(features=2, scale_mode="nope").init,
                   jax.random.PRNGKey(0), x)
