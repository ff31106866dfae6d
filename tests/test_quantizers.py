"""Tests for bmd_jax.core.quantizers: sign forward, surrogate gradients, schedules, scaling.

Every expected value is computed independently of the module: numpy formulas derived by
hand from docs/METHOD.md section 1, or (for SwishSign) autodiff of the smooth function.
"""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from bmd_jax.core import quantizers as q

F32 = np.float32


def _sign_np(x):
  """Reference sign with sign(0) = +1 (also -0.0 -> +1)."""
  x = np.asarray(x, np.float64)
  return np.where(x >= 0, 1.0, -1.0)


def _nudge(v, direction):
  return F32(np.nextafter(F32(v), F32(direction), dtype=F32))


def _make_probe_points():
  """Many points including 0, +-1, +-0.5 (the clips tested) and just inside / outside."""
  pts = [0.0, -0.0, 2.0, -2.0, 0.25, -0.25, 0.7, -0.7, 1e-6, -1e-6, 3.0, -3.0, 10.0, -10.0]
  for edge in (1.0, 0.5):
    for s in (1, -1):
      pts += [s * edge, _nudge(s * edge, 0.0), _nudge(s * edge, s * 10.0)]  # on, in, out
      pts += [s * edge * (1 - 1e-3), s * edge * (1 + 1e-3)]
  pts += list(np.linspace(-2.5, 2.5, 41))
  return np.asarray(pts, F32)


X = _make_probe_points()               # one fixed shape: eager ops compile only once


# --- analytic derivatives (numpy, float64) ------------------------------------------

def _ste_grad_np(x, clip):
  return np.where(np.abs(np.asarray(x, np.float64)) <= clip, 1.0, 0.0)


def _approx_grad_np(x):
  ax = np.abs(np.asarray(x, np.float64))
  return np.where(ax <= 1.0, 2.0 - 2.0 * ax, 0.0)


def _ede_grad_np(x, t, k):
  x = np.asarray(x, np.float64)
  return k * t * (1.0 - np.tanh(t * x) ** 2)


@jax.jit
def _swish_autodiff(x, beta):
  def smooth(v):
    s = jax.nn.sigmoid(beta * v)
    return 2.0 * s * (1.0 + beta * v * (1.0 - s)) - 1.0
  # smooth is elementwise, so the gradient of its sum is its pointwise derivative.
  return jax.grad(lambda v: jnp.sum(smooth(v)))(x)


def _swish_grad_autodiff(x, beta):
  """d/dx of 2*sigmoid(b x)*(1 + b x (1 - sigmoid(b x))) - 1, by jax autodiff."""
  xs = jnp.asarray(np.asarray(x, F32))
  return np.asarray(_swish_autodiff(xs, jnp.float32(beta)), np.float64)


# (name, kwargs, numpy derivative)
CASES = [
    ("ste", dict(clip_value=1.0), lambda x: _ste_grad_np(x, 1.0)),
    ("ste", dict(clip_value=0.5), lambda x: _ste_grad_np(x, 0.5)),
    ("approx_sign", dict(), _approx_grad_np),
    ("ede", dict(t=1.0, k=1.0), lambda x: _ede_grad_np(x, 1.0, 1.0)),
    ("ede", dict(t=0.1, k=10.0), lambda x: _ede_grad_np(x, 0.1, 10.0)),
    ("ede", dict(t=3.0, k=1.0), lambda x: _ede_grad_np(x, 3.0, 1.0)),
    ("ede", dict(t=10.0, k=1.0), lambda x: _ede_grad_np(x, 10.0, 1.0)),
    ("swish_sign", dict(beta=5.0), lambda x: _swish_grad_autodiff(x, 5.0)),
    ("swish_sign", dict(beta=1.0), lambda x: _swish_grad_autodiff(x, 1.0)),
    ("swish_sign", dict(beta=2.5), lambda x: _swish_grad_autodiff(x, 2.5)),
]


def _atol(name):
  # The float32 autodiff reference of SwishSign has a little cancellation error.
  return 5e-5 if name == "swish_sign" else 1e-5


CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in a.items())}" for n, a, _ in CASES]


# --- forward ------------------------------------------------------------------------

def test_registry_contents():
  assert set(q.ESTIMATORS) == {"ste", "approx_sign", "ede", "swish_sign"}
  for name, entry in q.ESTIMATORS.items():
    assert q.get_quantizer(name) is entry.sign


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(q.ESTIMATORS))
def test_forward_exact_sign(name, dtype):
  x_np = np.concatenate([
      np.array([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e30, -1e30, 0.5, -0.5], F32),
      np.random.RandomState(0).randn(200).astype(F32)])
  x = jnp.asarray(x_np).astype(dtype)
  y = q.get_quantizer(name)(x)
  assert y.dtype == dtype
  assert y.shape == x.shape
  y_np = np.asarray(y.astype(jnp.float32))
  np.testing.assert_array_equal(y_np, _sign_np(np.asarray(x.astype(jnp.float32))))
  assert set(np.unique(y_np)) <= {-1.0, 1.0}
  assert y_np[0] == 1.0 and y_np[1] == 1.0          # sign(0) = sign(-0) = +1


@pytest.mark.parametrize("name,kwargs,_", CASES, ids=CASE_IDS)
def test_forward_with_hyperparameters(name, kwargs, _):
  x = jnp.asarray(X)
  y = q.get_quantizer(name)(x, **kwargs)
  np.testing.assert_array_equal(np.asarray(y), _sign_np(np.asarray(x)))


def test_binarize_helper():
  x = jnp.array([-2.0, -0.0, 0.0, 3.0], jnp.bfloat16)
  y = q.binarize(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), [-1, 1, 1, 1])


# --- gradients ----------------------------------------------------------------------
# Gradients are taken under jit (one compilation per quantizer and dtype, the
# hyper-parameters traced) because eager autodiff compiles op by op and is slow on CPU.

@functools.partial(jax.jit, static_argnames="name")
def _grads(name, x, ct, hp):
  """(forward, grad of sum(f(x)), vjp with cotangent ct) of quantizer `name`."""
  f = lambda v: q.get_quantizer(name)(v, **hp)
  g_sum = jax.grad(lambda v: jnp.sum(f(v).astype(jnp.float32)))(x)
  y, vjp = jax.vjp(f, x)
  (g_ct,) = vjp(ct.astype(y.dtype))
  return y, g_sum, g_ct


def _traced(kwargs):
  return {k: jnp.float32(v) for k, v in kwargs.items()}


_CT = np.random.RandomState(1).randn(*X.shape).astype(F32)


@pytest.mark.parametrize("name,kwargs,ref", CASES, ids=CASE_IDS)
def test_grad_and_vjp_match_analytic(name, kwargs, ref):
  expected = ref(X)
  y, g, g_ct = _grads(name, jnp.asarray(X), jnp.asarray(_CT), _traced(kwargs))
  assert g.dtype == jnp.float32 and g_ct.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(y), _sign_np(X))
  np.testing.assert_allclose(np.asarray(g, np.float64), expected, rtol=1e-4, atol=_atol(name))
  # A random upstream cotangent: the vjp is cotangent * derivative, pointwise.
  np.testing.assert_allclose(np.asarray(g_ct, np.float64), _CT * expected, rtol=1e-4,
                             atol=2 * _atol(name))


def test_grad_with_python_float_hyperparameters():
  """The default call style: hyper-parameters as Python numbers (constants, not traced)."""
  @jax.jit
  def all_grads(x):
    return [jax.grad(lambda v, n=n, kw=kw: jnp.sum(q.get_quantizer(n)(v, **kw)))(x)
            for n, kw, _ in CASES]

  for g, (name, _, ref) in zip(all_grads(jnp.asarray(X)), CASES):
    np.testing.assert_allclose(np.asarray(g, np.float64), ref(X), rtol=1e-4, atol=_atol(name))


def test_specific_values_by_hand():
  x = jnp.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5])

  @jax.jit
  def grads(x):
    d = lambda f: jax.grad(lambda v: jnp.sum(f(v)))(x)
    return (d(q.ste_sign), d(lambda v: q.ste_sign(v, 0.5)), d(q.approx_sign),
            d(lambda v: q.ede_sign(v, 3.0, 0.5)), d(lambda v: q.swish_sign(v, 5.0)),
            d(q.ede_sign), d(q.swish_sign))

  ste1, ste05, approx, ede, swish, ede_default, swish_default = grads(x)
  np.testing.assert_allclose(ste1, [1, 1, 1, 1, 1, 0])
  np.testing.assert_allclose(ste05, [1, 1, 1, 0, 0, 0])
  np.testing.assert_allclose(approx, [2, 1, 1, 0, 0, 0])
  # EDE at 0 is k*t; SwishSign's slope at 0 is beta (default 5).
  np.testing.assert_allclose(ede[0], 1.5, rtol=1e-6)
  np.testing.assert_allclose(swish[0], 5.0, rtol=1e-6)
  np.testing.assert_allclose(ede_default, _ede_grad_np(x, 1.0, 1.0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(swish_default, _swish_grad_autodiff(x, 5.0), rtol=1e-4, atol=5e-5)


def test_swish_reference_is_a_sign_approximation():
  # Sanity of the test's own smooth function: it tends to -1 / +1 and is 0 at 0.
  b = 5.0
  smooth = lambda v: 2 * jax.nn.sigmoid(b * v) * (1 + b * v * (1 - jax.nn.sigmoid(b * v))) - 1
  np.testing.assert_allclose(smooth(jnp.array([-20.0, 0.0, 20.0])), [-1, 0, 1], atol=1e-5)


@pytest.mark.parametrize("name,kwargs,ref", CASES, ids=CASE_IDS)
def test_bf16_forward_and_gradients_close_to_f32(name, kwargs, ref):
  # Points exactly representable in bf16 so that both dtypes see the same x.
  x16 = jnp.asarray(X).astype(jnp.bfloat16)
  x32 = x16.astype(jnp.float32)
  ct16 = jnp.asarray(_CT).astype(jnp.bfloat16)
  hp = _traced(kwargs)
  y16, g16, gct16 = _grads(name, x16, ct16, hp)
  y32, g32, gct32 = _grads(name, x32, ct16.astype(jnp.float32), hp)
  assert y16.dtype == g16.dtype == gct16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y16.astype(jnp.float32)), np.asarray(y32))
  np.testing.assert_allclose(np.asarray(g16.astype(jnp.float32)), np.asarray(g32),
                             rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(gct16.astype(jnp.float32)), np.asarray(gct32),
                             rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(g32, np.float64), ref(np.asarray(x32)),
                             rtol=1e-4, atol=_atol(name))


@functools.partial(jax.jit, static_argnames="name")
def _hp_grads(name, x, hp):
  """Gradients w.r.t. x and w.r.t. every hyper-parameter of a weighted sum of f(x)."""
  weights = jnp.arange(x.size, dtype=jnp.float32) - x.size / 2
  loss = lambda v, h: jnp.sum(q.get_quantizer(name)(v, **h) * weights)
  return jax.grad(loss, argnums=(0, 1))(x, hp)


@pytest.mark.parametrize("name,kwargs,_", CASES, ids=CASE_IDS)
def test_hyperparameters_get_zero_gradient(name, kwargs, _):
  gx, ghp = _hp_grads(name, jnp.asarray(X), _traced(kwargs))
  assert set(ghp) == set(kwargs)
  for hp, g in ghp.items():
    assert g.shape == (), hp
    assert float(g) == 0.0, hp
  assert float(jnp.abs(gx).sum()) > 0           # x's gradient is not zero


# --- transformations ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(q.ESTIMATORS))
def test_jit_and_vmap(name):
  """jit(vmap(grad)) with the hyper-parameters traced: one trace serves every setting."""
  fn = q.get_quantizer(name)
  traces = []

  @jax.jit
  def run(xb, hp):
    traces.append(1)                                   # runs only while tracing
    y = jax.vmap(lambda v: fn(v, **hp))(xb)
    g = jax.vmap(jax.grad(lambda v: jnp.sum(fn(v, **hp))))(xb)
    return y, g

  xb = np.stack([X, -X, 0.5 * X])
  cases = [(kw, ref) for n, kw, ref in CASES if n == name]
  for kwargs, ref in cases:
    hp = {k: jnp.float32(v) for k, v in kwargs.items()}
    y, g = run(jnp.asarray(xb), hp)
    np.testing.assert_array_equal(np.asarray(y), _sign_np(xb))
    np.testing.assert_allclose(np.asarray(g, np.float64), ref(xb), rtol=1e-4, atol=_atol(name))
  assert len(traces) == 1


def test_vmap_over_ede_hyperparameters():
  x = X
  ts = np.array([0.1, 1.0, 5.0], F32)
  ks = np.maximum(1.0 / ts, 1.0).astype(F32)
  g = jax.jit(jax.vmap(jax.grad(lambda v, t, k: jnp.sum(q.ede_sign(v, t, k))),
                      in_axes=(None, 0, 0)))(
      jnp.asarray(x), jnp.asarray(ts), jnp.asarray(ks))
  expected = np.stack([_ede_grad_np(x, t, k) for t, k in zip(ts, ks)])
  np.testing.assert_allclose(np.asarray(g, np.float64), expected, rtol=1e-4, atol=1e-5)


def test_ede_traced_hyperparameters_do_not_recompile():
  traces = []

  @jax.jit
  def grad_fn(x, t, k):
    traces.append(1)                                   # runs only while tracing
    return jax.grad(lambda v: jnp.sum(q.ede_sign(v, t, k)))(x)

  x = X
  results = []
  for t in (0.01, 0.1, 1.0, 3.0, 10.0):
    k = max(1.0 / t, 1.0)
    g = grad_fn(jnp.asarray(x), jnp.float32(t), jnp.float32(k))
    results.append(np.asarray(g))
    np.testing.assert_allclose(np.asarray(g, np.float64), _ede_grad_np(x, t, k),
                               rtol=1e-4, atol=1e-5)
  assert len(traces) == 1
  for a, b in zip(results, results[1:]):
    assert not np.allclose(a, b)
  # Also through the schedule, with progress traced.
  sched = jax.jit(lambda x, p: grad_fn(x, *q.ede_schedule(p)))
  g0 = sched(jnp.asarray(x), 0.0)
  g1 = sched(jnp.asarray(x), 1.0)
  assert len(traces) == 1
  np.testing.assert_allclose(np.asarray(g0), _ede_grad_np(x, 1e-2, 100.0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g1), _ede_grad_np(x, 10.0, 1.0), rtol=1e-4, atol=1e-5)


def test_ste_and_swish_traced_hyperparameters():
  traces = []

  @jax.jit
  def grads(x, c, b):
    traces.append(1)
    gs = jax.grad(lambda v: jnp.sum(q.ste_sign(v, c)))(x)
    gw = jax.grad(lambda v: jnp.sum(q.swish_sign(v, b)))(x)
    return gs, gw

  x = X
  for c, b in ((1.0, 5.0), (0.5, 2.5)):
    gs, gw = grads(jnp.asarray(x), jnp.float32(c), jnp.float32(b))
    np.testing.assert_allclose(np.asarray(gs), _ste_grad_np(x, c))
    np.testing.assert_allclose(np.asarray(gw), _swish_grad_autodiff(x, b), rtol=1e-4,
                               atol=_atol("swish_sign"))
  assert len(traces) == 1


# --- schedule and registry ----------------------------------------------------------

@pytest.mark.parametrize("t_min,t_max", [(1e-2, 10.0), (1e-3, 10.0), (0.1, 5.0)])
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_ede_schedule(p, t_min, t_max):
  t, k = q.ede_schedule(p, t_min=t_min, t_max=t_max)
  t_ref = t_min * (t_max / t_min) ** p
  np.testing.assert_allclose(float(t), t_ref, rtol=1e-5)
  np.testing.assert_allclose(float(k), max(1.0 / t_ref, 1.0), rtol=1e-5)


def test_ede_schedule_defaults_and_endpoints():
  t0, k0 = q.ede_schedule(0.0)
  t1, k1 = q.ede_schedule(1.0)
  th, kh = q.ede_schedule(0.5)
  np.testing.assert_allclose([float(t0), float(k0)], [1e-2, 100.0], rtol=1e-5)
  np.testing.assert_allclose([float(t1), float(k1)], [10.0, 1.0], rtol=1e-5)
  np.testing.assert_allclose([float(th), float(kh)], [0.1 ** 0.5, 10 ** 0.5], rtol=1e-5)
  # Traced progress and a vector of progresses.
  t, k = jax.jit(q.ede_schedule)(jnp.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(np.asarray(t), [1e-2, 0.1 ** 0.5, 10.0], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(k), [100.0, 10 ** 0.5, 1.0], rtol=1e-5)


def test_get_quantizer_unknown_name():
  with pytest.raises(ValueError) as info:
    q.get_quantizer("not_a_quantizer")
  msg = str(info.value)
  assert "not_a_quantizer" in msg
  for name in q.ESTIMATORS:
    assert name in msg


# --- weight scaling -----------------------------------------------------------------

def _kernels():
  rng = np.random.RandomState(2)
  conv = (rng.randn(3, 3, 4, 5) * rng.uniform(0.1, 3.0, size=5)).astype(F32)   # HWIO
  dense = (rng.randn(7, 6) * rng.uniform(0.1, 3.0, size=6) + 0.3).astype(F32)   # (in, out)
  return {"conv": conv, "dense": dense}


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_mean_abs_scale(kind):
  w = _kernels()[kind]
  alpha = q.mean_abs_scale(jnp.asarray(w))
  out = w.shape[-1]
  ref = np.abs(w.reshape(-1, out).astype(np.float64)).mean(axis=0)
  assert alpha.shape == (1,) * (w.ndim - 1) + (out,)
  np.testing.assert_allclose(np.asarray(alpha).reshape(out), ref, rtol=1e-6)
  # Per output channel: channel-o scale equals mean |w[..., o]|.
  for o in range(out):
    np.testing.assert_allclose(float(np.asarray(alpha)[..., o].item()),
                               np.abs(w[..., o]).mean(), rtol=1e-6)
  c = jnp.asarray(np.random.RandomState(3).randn(*alpha.shape).astype(F32))
  g = jax.jit(jax.grad(lambda v: jnp.sum(q.mean_abs_scale(v) * c)))(jnp.asarray(w))
  np.testing.assert_array_equal(np.asarray(g), np.zeros_like(w))


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_irnet_standardize(kind):
  w = _kernels()[kind]
  out = w.shape[-1]
  w_hat, scale = jax.jit(q.irnet_standardize)(jnp.asarray(w))
  assert w_hat.shape == w.shape
  assert scale.shape == (1,) * (w.ndim - 1) + (out,)
  flat = w.reshape(-1, out).astype(np.float64)
  ref_hat = (flat - flat.mean(0)) / flat.std(0, ddof=1)
  got = np.asarray(w_hat, np.float64).reshape(-1, out)
  np.testing.assert_allclose(got, ref_hat, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(got.std(0, ddof=1), 1.0, rtol=1e-5)
  s = np.asarray(scale, np.float64).reshape(out)
  ref_scale = 2.0 ** np.round(np.log2(np.abs(ref_hat).mean(0)))
  np.testing.assert_allclose(s, ref_scale, rtol=1e-6)
  log = np.log2(s)
  np.testing.assert_array_equal(log, np.round(log))             # a power of two
  # Scale has no gradient; w_hat does.
  c = jnp.asarray(np.random.RandomState(4).randn(out).astype(F32))
  g_scale, g_hat = jax.jit(lambda v: (
      jax.grad(lambda u: jnp.sum(q.irnet_standardize(u)[1] * c))(v),
      jax.grad(lambda u: jnp.sum(q.irnet_standardize(u)[0] ** 3))(v)))(jnp.asarray(w))
  np.testing.assert_array_equal(np.asarray(g_scale), np.zeros_like(w))
  assert float(jnp.abs(g_hat).sum()) > 0


def test_irnet_scale_is_not_always_one():
  # A heavy two-point kernel has mean |w_hat| near 1, a spiky one well below: the scales
  # differ, so the rounding to a power of two is really exercised.
  spiky = np.zeros((64, 1), F32)
  spiky[0, 0] = 10.0
  _, scale = q.irnet_standardize(jnp.asarray(spiky))
  flat = spiky.astype(np.float64)
  hat = (flat - flat.mean()) / flat.std(ddof=1)
  np.testing.assert_allclose(float(scale.squeeze()), 2.0 ** np.round(np.log2(np.abs(hat).mean())))
  assert float(scale.squeeze()) < 1.0


@pytest.mark.parametrize("kind", ["conv", "dense"])
@pytest.mark.parametrize("mode", ["none", "mean_abs", "irnet"])
def test_binarize_kernel(mode, kind):
  w = _kernels()[kind].copy()
  w[(0,) * w.ndim] = 0.0                                        # sign(0) = +1 in the kernel
  for name in sorted(q.ESTIMATORS):
    _check_binarized_kernel(w, mode, name)


def _check_binarized_kernel(w, mode, name):
  out = w.shape[-1]
  wb = np.asarray(q.binarize_kernel(jnp.asarray(w), q.get_quantizer(name), mode), np.float64)
  assert wb.shape == w.shape
  flat = w.reshape(-1, out).astype(np.float64)
  if mode == "none":
    alpha = np.ones(out)
    signs = _sign_np(flat)
  elif mode == "mean_abs":
    alpha = np.abs(flat).mean(0)
    signs = _sign_np(flat)
  else:
    hat = (flat - flat.mean(0)) / flat.std(0, ddof=1)
    alpha = 2.0 ** np.round(np.log2(np.abs(hat).mean(0)))
    signs = _sign_np(hat)
  got = wb.reshape(-1, out)
  np.testing.assert_allclose(got, signs * alpha, rtol=1e-6)
  for o in range(out):
    np.testing.assert_allclose(np.unique(np.abs(got[:, o])), [alpha[o]], rtol=1e-6)


def test_binarize_kernel_passes_quantizer_args_and_gradient():
  w = _kernels()["dense"]
  c = np.random.RandomState(5).randn(*w.shape).astype(F32)
  grad_fn = jax.jit(jax.grad(lambda v, t: jnp.sum(
      q.binarize_kernel(v, q.ede_sign, "mean_abs", t=t, k=1.0) * c)))
  for t in (0.5, 4.0):
    g = grad_fn(jnp.asarray(w), jnp.float32(t))
    expected = c * _ede_grad_np(w, t, 1.0)  # mean_abs: alpha passes the gradient straight
    # float32's 1 - tanh^2 loses digits where t|w| is large: absolute tolerance there.
    np.testing.assert_allclose(np.asarray(g, np.float64), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_binarize_kernel_unknown_mode():
  with pytest.raises(ValueError) as info:
    q.binarize_kernel(jnp.ones((3, 2)), q.ste_sign, "bogus")
  for mode in ("bogus", "none", "mean_abs", "irnet"):
    assert mode in str(info.value)
