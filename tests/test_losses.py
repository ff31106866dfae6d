"""Tests of bmd_jax.core.losses against independent numpy/scipy computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax.core import FrozenDict

from bmd_jax.core import losses

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------
# numpy references, written independently of the module under test.


def np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_kurtosis(w):
  w = np.asarray(w, np.float64).ravel()
  return np.mean(((w - w.mean()) / w.std(ddof=1)) ** 4)


def np_softmax_kl(teacher, student, temperature, reduction="channel_mean"):
  total = 0.0
  for name in teacher:
    t = np.asarray(teacher[name], np.float64)
    s = np.asarray(student[name], np.float64)
    t = t.reshape(-1, t.shape[-1]) / temperature
    s = s.reshape(-1, s.shape[-1]) / temperature
    kl = []
    for o in range(t.shape[1]):  # one output channel at a time, over its fan-in
      p = np.exp(t[:, o]) / np.exp(t[:, o]).sum()
      q = np.exp(s[:, o]) / np.exp(s[:, o]).sum()
      kl.append(np.sum(p * np.log(p / q)))
    # channel_mean: mean over channels; channel_sum: sum; weight_sum: every weight's term
    # summed, i.e. fan_in (t.shape[0]) times the channel sum.
    layer = {"channel_mean": np.mean(kl), "channel_sum": np.sum(kl),
             "weight_sum": t.shape[0] * np.sum(kl)}[reduction]
    total += layer * temperature**2
  return total


def np_standardized(w):
  """Per output channel (last axis) centred, divided by its ddof=1 std."""
  w = np.asarray(w, np.float64)
  flat = w.reshape(-1, w.shape[-1])
  return ((flat - flat.mean(0)) / flat.std(0, ddof=1)).reshape(w.shape)


def np_histogram_kl(teacher, student, bins, bandwidth=None, eps=1e-6):
  total = 0.0
  for name in teacher:
    t = np.asarray(teacher[name], np.float64).ravel()
    s = np.asarray(student[name], np.float64).ravel()
    low, high = min(t.min(), s.min()), max(t.max(), s.max())
    edges = np.linspace(low, high, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    h = (high - low) / bins if bandwidth is None else bandwidth

    def hist(v):
      mass = np.array([np.exp(-0.5 * ((v - c) / h) ** 2).sum() for c in centers])
      p = mass / mass.sum() + eps
      return p / p.sum()

    p, q = hist(t), hist(s)
    total += np.sum(p * np.log(p / q))
  return total


def np_released(teacher, student):
  total = 0.0
  for name in teacher:
    t = np.asarray(teacher[name], np.float64)
    s = np.asarray(student[name], np.float64)
    total += np.mean(np.exp(t) * (t - s))
  return total


def kernel_pair(scale=0.1):
  """Teacher and student kernel dicts: one HWIO conv and one dense layer."""
  shapes = {"stage1/conv/latent_kernel": (3, 3, 4, 5), "stage2/dense/latent_kernel": (6, 3)}
  teacher = {k: jnp.asarray(RNG.normal(0, scale, s), jnp.float32) for k, s in shapes.items()}
  student = {k: jnp.asarray(RNG.normal(0, scale, s), jnp.float32) for k, s in shapes.items()}
  return teacher, student


def make_params():
  """A small ResNet-like tree: float first conv and classifier, binary blocks and shortcut."""
  w = lambda *shape: jnp.asarray(RNG.normal(0, 1, shape), jnp.float32)
  return {
      "conv_init": {"kernel": w(3, 3, 3, 4)},
      "stage1_block0": {
          "conv1": {"latent_kernel": w(3, 3, 4, 4), "bn": {"scale": w(4)}},
          "conv2": {"latent_kernel": w(3, 3, 4, 4)},
      },
      "stage2_block0": {
          "conv1": {"latent_kernel": w(3, 3, 4, 8)},
          "shortcut_conv": {"latent_kernel": w(1, 1, 4, 8)},
      },
      "stage3_block0": {"downsample": {"conv": {"latent_kernel": w(1, 1, 8, 8)},
                                       "real": {"kernel": w(1, 1, 8, 8)}}},
      "head": {"kernel": w(8, 10), "bias": w(10)},
  }


ALL_BINARY = [
    "stage1_block0/conv1/latent_kernel",
    "stage1_block0/conv2/latent_kernel",
    "stage2_block0/conv1/latent_kernel",
    "stage2_block0/shortcut_conv/latent_kernel",
    "stage3_block0/downsample/conv/latent_kernel",
]
NO_SHORTCUTS = ALL_BINARY[:3]


# ------------------------------------------------------------------------------------------------
# Cross-entropy and distillation.


def test_cross_entropy_matches_numpy():
  logits = RNG.normal(0, 2, (6, 5)).astype(np.float32)
  labels = RNG.integers(0, 5, 6)
  expected = -np.mean(np_log_softmax(logits.astype(np.float64), 1)[np.arange(6), labels])
  np.testing.assert_allclose(jax.jit(losses.cross_entropy)(jnp.asarray(logits), jnp.asarray(labels)),
                             expected, rtol=1e-5)


def test_distillation_loss_matches_numpy_and_soft_cross_entropy():
  zs = RNG.normal(0, 2, (4, 7)).astype(np.float32)
  zt = RNG.normal(0, 2, (4, 7)).astype(np.float32)
  p_t = np.exp(np_log_softmax(zt.astype(np.float64), 1))
  expected = -np.mean(np.sum(p_t * np_log_softmax(zs.astype(np.float64), 1), axis=1))
  distillation = jax.jit(losses.distillation_loss)
  got = distillation(jnp.asarray(zs), jnp.asarray(zt))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # It is the cross-entropy against the teacher's soft labels; with one-hot soft labels (a very
  # confident teacher) it is the usual cross-entropy.
  labels = np.array([0, 3, 6, 2])
  one_hot_teacher = 1e4 * np.eye(7, dtype=np.float32)[labels]
  np.testing.assert_allclose(distillation(jnp.asarray(zs), jnp.asarray(one_hot_teacher)),
                             jax.jit(losses.cross_entropy)(jnp.asarray(zs), jnp.asarray(labels)), rtol=1e-5)


def test_distillation_loss_gradient_only_reaches_student():
  zs, zt = jnp.asarray(RNG.normal(0, 1, (3, 5))), jnp.asarray(RNG.normal(0, 1, (3, 5)))
  g_s, g_t = jax.jit(jax.grad(losses.distillation_loss, argnums=(0, 1)))(zs, zt)
  assert np.abs(np.asarray(g_t)).max() == 0.0
  # d/dzS of the soft cross-entropy is (softmax(zS) - softmax(zT)) / batch.
  expected = (np.exp(np_log_softmax(np.asarray(zs, np.float64), 1))
              - np.exp(np_log_softmax(np.asarray(zt, np.float64), 1))) / 3
  np.testing.assert_allclose(g_s, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Kurtosis.


@pytest.mark.parametrize("shape", [(7,), (50, 20), (3, 3, 4, 5)])
@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_kurtosis_is_scipy_biased_kurtosis_times_bessel_factor(shape, dist):
  x = RNG.normal(size=shape) if dist == "normal" else RNG.uniform(-1, 1, size=shape)
  x = x.astype(np.float32)
  n = x.size
  # Ours is m4 / s^4 with s^2 the ddof=1 variance; scipy's biased kurtosis is m4 / m2^2 with
  # m2 = s^2 (n - 1) / n. (scipy's bias=False is another, unbiased G2, estimator.)
  expected = scipy.stats.kurtosis(x.ravel().astype(np.float64), fisher=False, bias=True)
  expected *= ((n - 1) / n) ** 2
  got = jax.jit(losses.kurtosis)(jnp.asarray(x))
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(got, np_kurtosis(x), rtol=1e-5)


def test_kurtosis_reference_values():
  n = 10
  two_point = jnp.asarray([1.0, -1.0] * (n // 2))
  np.testing.assert_allclose(losses.kurtosis(two_point), ((n - 1) / n) ** 2, rtol=1e-6)
  big = 200_000
  np.testing.assert_allclose(losses.kurtosis(jnp.asarray(RNG.uniform(-1, 1, big))), 1.8, atol=0.02)
  np.testing.assert_allclose(losses.kurtosis(jnp.asarray(RNG.normal(size=big))), 3.0, atol=0.06)
  # Two Gaussians at +-mu with std sigma: (1 + 6r^2 + 3r^4) / (1 + r^2)^2, r = sigma / mu.
  r = 0.54
  mixture = RNG.choice([-1.0, 1.0], big) + r * RNG.normal(size=big)
  np.testing.assert_allclose(losses.kurtosis(jnp.asarray(mixture)),
                             (1 + 6 * r**2 + 3 * r**4) / (1 + r**2) ** 2, atol=0.02)


def test_kurtosis_bf16_input_is_computed_in_float32():
  x = jnp.asarray(RNG.uniform(-1, 1, (64, 32)), jnp.bfloat16)
  got = jax.jit(losses.kurtosis)(x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_kurtosis(np.asarray(x.astype(jnp.float32))), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Finding the binarized layers.


def test_binarized_kernels_finds_latent_kernels_only_in_sorted_order():
  params = make_params()
  found = losses.binarized_kernels(params)
  assert list(found) == ALL_BINARY
  for name, value in found.items():
    node = params
    for key in name.split("/"):
      node = node[key]
    assert value is node


def test_binarized_kernels_shortcut_toggle_and_frozen_dict():
  params = make_params()
  assert list(losses.binarized_kernels(params, include_shortcuts=False)) == NO_SHORTCUTS
  frozen = FrozenDict(params)
  assert list(losses.binarized_kernels(frozen)) == ALL_BINARY
  assert list(losses.binarized_kernels({"params": frozen}, include_shortcuts=False)) == [
      "params/" + name for name in NO_SHORTCUTS]


def test_binarized_kernels_errors():
  float_only = {"conv_init": {"kernel": jnp.ones((3, 3, 3, 4))}, "head": {"kernel": jnp.ones(2)}}
  with pytest.raises(ValueError, match="no binarized layers"):
    losses.binarized_kernels(float_only)
  only_shortcut = {"block": {"shortcut": {"latent_kernel": jnp.ones((1, 1, 2, 2))}}}
  assert list(losses.binarized_kernels(only_shortcut)) == ["block/shortcut/latent_kernel"]
  with pytest.raises(ValueError, match="include_shortcuts"):
    losses.binarized_kernels(only_shortcut, include_shortcuts=False)


# ------------------------------------------------------------------------------------------------
# Kurtosis loss.


@pytest.mark.parametrize("mode,reduce", [("avg", np.mean), ("sum", np.sum), ("max", np.max)])
def test_kurtosis_loss_modes(mode, reduce):
  params = make_params()
  kurts = np.array([np_kurtosis(losses.binarized_kernels(params)[n]) for n in ALL_BINARY])
  loss, per_layer = jax.jit(functools.partial(losses.kurtosis_loss, target=1.8, mode=mode))(params)
  np.testing.assert_allclose(loss, reduce((kurts - 1.8) ** 2), rtol=1e-5)
  assert list(per_layer) == ALL_BINARY
  np.testing.assert_allclose([per_layer[n] for n in ALL_BINARY], kurts, rtol=1e-5)


def test_kurtosis_loss_per_layer_targets_list_and_dict():
  params = make_params()
  kernels = losses.binarized_kernels(params, include_shortcuts=False)
  kurts = np.array([np_kurtosis(kernels[n]) for n in NO_SHORTCUTS])
  targets = [1.2, 1.8, 2.2]
  expected = np.mean((kurts - np.array(targets)) ** 2)
  # Targets as a list, as a dict, and as a (traced) array: all one order.
  loss_fn = jax.jit(lambda p, t: losses.kurtosis_loss(p, t, include_shortcuts=False)[0])
  np.testing.assert_allclose(loss_fn(params, targets), expected, rtol=1e-5)
  np.testing.assert_allclose(loss_fn(params, dict(zip(NO_SHORTCUTS, targets))), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(loss_fn(params, jnp.asarray(targets)), expected, rtol=1e-5)


def test_kurtosis_loss_gradient_moves_kurtosis_toward_target():
  params = {"conv": {"latent_kernel": jnp.asarray(RNG.normal(size=(3, 3, 8, 8)), jnp.float32)}}
  loss_fn = lambda p: losses.kurtosis_loss(p, target=1.8)[0]
  loss_fn = jax.jit(loss_fn)
  before = loss_fn(params)
  grads = jax.jit(jax.grad(loss_fn))(params)
  after = loss_fn(jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads))
  assert after < before


def test_standardized_view_matches_numpy():
  w = jnp.asarray(RNG.normal(0.3, 2.0, (3, 3, 4, 6)) * np.arange(1, 7), jnp.float32)
  np.testing.assert_allclose(losses.standardized(w), np_standardized(w), rtol=1e-5, atol=1e-6)


def test_kurtosis_loss_standardized_view_differs_from_latent_and_matches_numpy():
  # Channels of different scales: a Gaussian mixture of scales is heavy-tailed as a whole,
  # while each standardized channel is Gaussian. Kurtosis is invariant to one affine map of
  # the tensor, not to one per channel, so the two views disagree.
  w = RNG.normal(0, 1, (3, 3, 16, 8)) * np.geomspace(0.1, 10, 8)
  params = {"conv": {"latent_kernel": jnp.asarray(w, jnp.float32)}}
  _, latent = losses.kurtosis_loss(params, view="latent")
  loss, viewed = losses.kurtosis_loss(params, target=1.8, view="standardized")
  name = "conv/latent_kernel"
  np.testing.assert_allclose(viewed[name], np_kurtosis(np_standardized(w)), rtol=1e-5)
  np.testing.assert_allclose(loss, (np_kurtosis(np_standardized(w)) - 1.8) ** 2, rtol=1e-5)
  np.testing.assert_allclose(latent[name], np_kurtosis(w), rtol=1e-5)
  assert float(latent[name]) > 2 * float(viewed[name])


def test_kurtosis_loss_standardized_view_is_blind_to_per_channel_affine_maps():
  w = RNG.normal(0, 1, (3, 3, 8, 4))
  shifted = w * np.array([0.1, 1.0, 3.0, 7.0]) + np.array([-2.0, 0.0, 1.0, 5.0])
  loss_fn = jax.jit(lambda v: losses.kurtosis_loss(
      {"c": {"latent_kernel": v}}, view="standardized")[0])
  np.testing.assert_allclose(loss_fn(jnp.asarray(shifted, jnp.float32)),
                             loss_fn(jnp.asarray(w, jnp.float32)), rtol=1e-4)


def test_kurtosis_loss_errors():
  params = make_params()
  with pytest.raises(ValueError, match="unknown view"):
    losses.kurtosis_loss(params, view="binary")
  with pytest.raises(ValueError, match="unknown mode"):
    losses.kurtosis_loss(params, mode="mean")
  with pytest.raises(ValueError, match="2 targets for 5"):
    losses.kurtosis_loss(params, target=[1.8, 1.8])
  with pytest.raises(ValueError, match="Missing"):
    losses.kurtosis_loss(params, target={ALL_BINARY[0]: 1.8})
  with pytest.raises(ValueError, match="not regularized"):
    losses.kurtosis_loss(params, target=dict.fromkeys(ALL_BINARY, 1.8), include_shortcuts=False)


# ------------------------------------------------------------------------------------------------
# Weight distribution mimicking.


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("reduction", ["channel_mean", "channel_sum", "weight_sum"])
def test_wdm_softmax_kl_matches_numpy(temperature, reduction):
  teacher, student = kernel_pair(scale=1.0)
  wdm = jax.jit(functools.partial(losses.wdm_softmax_kl, temperature=temperature,
                                  reduction=reduction))
  np.testing.assert_allclose(wdm(teacher, student),
                             np_softmax_kl(teacher, student, temperature, reduction), rtol=1e-4)


def test_wdm_softmax_kl_default_is_the_legacy_reduction_and_unknown_ones_are_refused():
  teacher, student = kernel_pair(scale=1.0)
  np.testing.assert_allclose(losses.wdm_softmax_kl(teacher, student),
                             np_softmax_kl(teacher, student, 4.0, "channel_mean"), rtol=1e-4)
  with pytest.raises(ValueError, match="unknown reduction 'mean'.*weight_sum"):
    losses.wdm_softmax_kl(teacher, student, reduction="mean")


def test_wdm_weight_sum_gradient_is_the_centred_weight_difference():
  # For weights small next to T, T^2 * fan_in * KL per channel is half the squared norm of
  # (w_S - w_T) centred over the fan-in (docs/METHOD.md section 4): its gradient is that
  # centred difference, independently of the layer's size.
  teacher, student = kernel_pair(scale=0.01)
  grads = jax.grad(lambda s: losses.wdm_softmax_kl(teacher, s, 4.0, "weight_sum"))(student)
  for name in teacher:
    d = np.asarray(student[name], np.float64) - np.asarray(teacher[name], np.float64)
    d = d.reshape(-1, d.shape[-1])
    expected = (d - d.mean(0)).reshape(teacher[name].shape)
    np.testing.assert_allclose(grads[name], expected, rtol=0.02, atol=1e-5)


@pytest.mark.parametrize("bandwidth", [None, 0.05])
def test_wdm_histogram_matches_numpy(bandwidth):
  teacher, student = kernel_pair()
  np.testing.assert_allclose(
      jax.jit(functools.partial(losses.wdm_histogram, bins=16, bandwidth=bandwidth))(teacher, student),
      np_histogram_kl(teacher, student, bins=16, bandwidth=bandwidth), rtol=1e-4)


def test_wdm_released_matches_numpy():
  teacher, student = kernel_pair()
  np.testing.assert_allclose(jax.jit(losses.wdm_released)(teacher, student),
                             np_released(teacher, student), rtol=1e-5)


@pytest.mark.parametrize("form", ["softmax_kl", "histogram"])
def test_wdm_pulls_student_toward_teacher(form):
  teacher, student = kernel_pair()
  loss_fn = jax.jit(lambda s: losses.WDM_FORMS[form](teacher, s))
  np.testing.assert_allclose(loss_fn(teacher), 0.0, atol=1e-6)
  before = loss_fn(student)
  assert before > 1e-4
  grads = jax.jit(jax.grad(loss_fn))(student)
  step = 1e-3 / max(float(jnp.abs(g).max()) for g in grads.values())
  after = loss_fn({k: student[k] - step * grads[k] for k in student})
  assert after < before
  teacher_grads = jax.jit(jax.grad(lambda t: losses.WDM_FORMS[form](t, student)))(teacher)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in teacher_grads.values())


def test_wdm_released_gradient_is_independent_of_student():
  teacher, student = kernel_pair()
  other = {k: v + 1.0 for k, v in student.items()}
  grad_fn = jax.jit(jax.grad(lambda s: losses.wdm_released(teacher, s)))
  for s in (student, other):
    grads = grad_fn(s)
    for name, g in grads.items():
      t = np.asarray(teacher[name], np.float64)
      np.testing.assert_allclose(g, -np.exp(t) / t.size, rtol=1e-5)


def test_wdm_rejects_mismatched_layers():
  teacher, student = kernel_pair()
  renamed = {"other/latent_kernel" if "dense" in k else k: v for k, v in student.items()}
  for form in losses.WDM_FORMS.values():
    with pytest.raises(ValueError, match="stage2/dense/latent_kernel"):
      form(teacher, renamed)
  reshaped = dict(student, **{"stage2/dense/latent_kernel": jnp.ones((6, 4))})
  with pytest.raises(ValueError, match=r"'stage2/dense/latent_kernel'.*\(6, 3\).*\(6, 4\)"):
    losses.wdm_softmax_kl(teacher, reshaped)


def test_wdm_loss_discovers_layers_and_dispatches():
  teacher_params = make_params()
  student_params = jax.tree_util.tree_map(lambda x: x * 0.5 + 0.1, make_params())
  wdm = lambda **kw: jax.jit(functools.partial(losses.wdm_loss, **kw))(teacher_params,
                                                                       student_params)
  # By default the shortcut/downsample convs are left out, as in the release.
  t = {n: losses.binarized_kernels(teacher_params)[n] for n in NO_SHORTCUTS}
  s = {n: losses.binarized_kernels(student_params)[n] for n in NO_SHORTCUTS}
  np.testing.assert_allclose(wdm(), np_softmax_kl(t, s, 4.0), rtol=1e-4)
  np.testing.assert_allclose(wdm(form="softmax_kl", temperature=2.0), np_softmax_kl(t, s, 2.0),
                             rtol=1e-4)
  t_all = losses.binarized_kernels(teacher_params)
  s_all = losses.binarized_kernels(student_params)
  np.testing.assert_allclose(wdm(form="released", include_shortcuts=True),
                             np_released(t_all, s_all), rtol=1e-5)
  with pytest.raises(ValueError, match="histogram"):
    losses.wdm_loss(teacher_params, student_params, form="kl")
