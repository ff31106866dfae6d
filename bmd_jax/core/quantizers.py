"""Sign binarizers with surrogate gradients, and weight scaling.

Every estimator has the same forward pass: exactly +1 where x >= 0 and -1 elsewhere
(``jnp.sign(0) == 0`` would silently zero weights and activations, so it is never used).
They differ only in the gradient that replaces d sign / dx = 0, each written as a
``jax.custom_vjp``. Hyper-parameters (clip value, EDE's t and k, SwishSign's beta) are
ordinary arguments, so they may be traced values: a schedule that changes them every
step never recompiles. They receive a zero gradient.

Usable on their own::

    from bmd_jax.core import quantizers
    y = quantizers.ede_sign(x, t=2.0, k=1.0)
    fn = quantizers.get_quantizer("approx_sign")

A config names an estimator of its own by its import path, ``package.module:attribute``
(components.py, docs/EXTENDING.md), wherever it names a registered one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bmd_jax.core import components


def binarize(x: jax.Array) -> jax.Array:
  """Forward of every estimator: +1 where x >= 0, else -1, in x's dtype."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def _zero_like(value):
  return jnp.zeros_like(jnp.asarray(value, dtype=jnp.float32))


# --- clipped straight-through estimator (BNN, larq's ste_sign) -----------------

@jax.custom_vjp
def _ste_sign(x, clip_value):
  return binarize(x)


def _ste_fwd(x, clip_value):
  return binarize(x), (x, clip_value)


def _ste_bwd(res, g):
  x, clip_value = res
  passes = jnp.abs(x) <= clip_value
  return jnp.where(passes, g, 0).astype(g.dtype), _zero_like(clip_value)


_ste_sign.defvjp(_ste_fwd, _ste_bwd)


def ste_sign(x: jax.Array, clip_value: float = 1.0) -> jax.Array:
  """Sign with the clipped straight-through gradient: 1 where |x| <= clip_value, else 0."""
  return _ste_sign(x, clip_value)


# --- ApproxSign (Bi-Real Net; ReActNet's activations) --------------------------

@jax.custom_vjp
def approx_sign(x: jax.Array) -> jax.Array:
  """Sign with Bi-Real Net's piecewise-polynomial gradient: 2 - 2|x| on |x| <= 1, else 0."""
  return binarize(x)


def _approx_fwd(x):
  return binarize(x), x


def _approx_bwd(x, g):
  slope = jnp.where(jnp.abs(x) <= 1, 2 - 2 * jnp.abs(x), 0)
  return ((g * slope).astype(g.dtype),)


approx_sign.defvjp(_approx_fwd, _approx_bwd)


# --- EDE, the error decay estimator (IR-Net) -------------------------------------

@jax.custom_vjp
def _ede_sign(x, t, k):
  return binarize(x)


def _ede_fwd(x, t, k):
  return binarize(x), (x, t, k)


def _ede_bwd(res, g):
  x, t, k = res
  xf = x.astype(jnp.float32)
  slope = k * t * (1 - jnp.tanh(t * xf) ** 2)
  return (g * slope).astype(g.dtype), _zero_like(t), _zero_like(k)


_ede_sign.defvjp(_ede_fwd, _ede_bwd)


def ede_sign(x: jax.Array, t: float = 1.0, k: float = 1.0) -> jax.Array:
  """Sign with IR-Net's gradient k * t * (1 - tanh^2(t x)); see `ede_schedule` for t, k."""
  return _ede_sign(x, t, k)


def ede_schedule(progress, t_min: float = 1e-2, t_max: float = 10.0):
  """IR-Net's schedule: t = t_min * (t_max / t_min) ** progress, k = max(1 / t, 1).

  `progress` is epoch / total epochs in [0, 1]; it may be a traced value.
  BD-BNN's release uses t_min = 1e-2 (IR-Net's CIFAR trainer 1e-3), t_max = 10.
  """
  t = t_min * (t_max / t_min) ** jnp.asarray(progress, jnp.float32)
  k = jnp.maximum(1.0 / t, 1.0)
  return t, k


# --- SwishSign (larq) -------------------------------------------------------------

@jax.custom_vjp
def _swish_sign(x, beta):
  return binarize(x)


def _swish_fwd(x, beta):
  return binarize(x), (x, beta)


def _swish_bwd(res, g):
  x, beta = res
  bx = beta * x.astype(jnp.float32)
  # d/dx of 2*sigmoid(bx)*(1 + bx*(1 - sigmoid(bx))) - 1, simplified.
  slope = beta * (2 - bx * jnp.tanh(bx / 2)) / (1 + jnp.cosh(bx))
  return (g * slope).astype(g.dtype), _zero_like(beta)


_swish_sign.defvjp(_swish_fwd, _swish_bwd)


def swish_sign(x: jax.Array, beta: float = 5.0) -> jax.Array:
  """Sign with the gradient of larq's SwishSign, a smooth sign whose sharpness is beta."""
  return _swish_sign(x, beta)


# --- registry -------------------------------------------------------------------

def _no_arguments(settings, progress) -> dict:
  return {}


@dataclasses.dataclass(frozen=True)
class Estimator:
  """A registered sign estimator: its function and the traced arguments it takes.

  ``arguments(settings, progress)`` gives the function's keyword arguments from the config's
  ``estimators`` section and where training stands (``progress`` in [0, 1], possibly a traced
  value); ``scheduled`` names those that change with progress, which the train loop logs.
  A new estimator is one entry here (plus its settings in the config), or, outside the
  package, an Estimator that a config names by its import path (docs/EXTENDING.md). Its
  settings are the config's ``estimators`` fields; those that are its own, read them with
  ``settings.get(field, default)``, since the arguments of every estimator a process has met
  are computed under each config it runs.
  """

  sign: Callable[..., jax.Array]
  arguments: Callable[[Any, Any], dict] = _no_arguments
  scheduled: tuple[str, ...] = ()


def _ede_arguments(settings, progress) -> dict:
  t, k = ede_schedule(progress, settings.ede_t_min, settings.ede_t_max)
  return {"t": t, "k": k}


ESTIMATORS: dict[str, Estimator] = {
    "ste": Estimator(ste_sign, lambda settings, _: {"clip_value": settings.ste_clip_value}),
    "approx_sign": Estimator(approx_sign),
    "ede": Estimator(ede_sign, _ede_arguments, scheduled=("t", "k")),
    "swish_sign": Estimator(swish_sign, lambda settings, _: {"beta": settings.swish_beta}),
}


# Estimators met by their import path in this process (components.py), by path: the train
# step computes their arguments too. Kept apart from ESTIMATORS, which lists the registered.
_IMPORTED: dict[str, Estimator] = {}


def register(name: str, estimator: Estimator | Callable[..., jax.Array],
             replace: bool = False) -> Estimator:
  """Registers an estimator in this process (a notebook's way; a config read by other
  processes names it by its import path instead). A bare sign function takes no traced
  arguments. Returns the entry."""
  return components.register(ESTIMATORS, name, as_estimator(estimator), "estimator", replace)


def as_estimator(found, name: str = "") -> Estimator:
  """An `Estimator` as it is, a bare sign function as one without traced arguments."""
  if isinstance(found, Estimator):
    return found
  if callable(found):
    return Estimator(found)
  raise components.ComponentError(
      f"quantizer {name!r} names {found!r}, neither a quantizers.Estimator nor a sign function")


def get_estimator(name: str, what: str | None = None) -> Estimator:
  """The registry entry of `name` (a config's string): a registered name, or an import path
  ``package.module:attribute`` to an `Estimator` or a sign function. `what` names the config
  field in an error."""
  if name in _IMPORTED:
    return _IMPORTED[name]
  found = components.lookup(ESTIMATORS, name, "quantizer", what)
  if components.is_import_path(name):
    found = _IMPORTED[name] = as_estimator(found, name)
  return found


def get_quantizer(name: str) -> Callable[..., jax.Array]:
  """The sign function registered under `name` (or at the import path `name`)."""
  return get_estimator(name).sign


def traced_arguments(settings, progress, names=None) -> dict[str, dict]:
  """{estimator name: its keyword arguments} at `progress`, for `names` (default: every
  registered one and every one imported by its path in this process).

  These are what binary layers receive as ``estimator_args``; values may be traced, so a
  schedule moves them without recompiling.
  """
  names = [*sorted(ESTIMATORS), *sorted(_IMPORTED)] if names is None else names
  return {name: get_estimator(name).arguments(settings, progress) for name in names}


def scheduled_values(arguments: dict[str, dict], names) -> dict[str, Any]:
  """``{"<estimator>/<argument>": value}`` of the scheduled arguments of the estimators in
  `names` (e.g. ``ede/t``): what moves during training and is worth a metric."""
  return {f"{name}/{arg}": arguments[name][arg]
          for name in sorted(set(names)) for arg in get_estimator(name).scheduled}


# --- weight scaling -------------------------------------------------------------
# Kernels keep the output channel on the last axis (HWIO convs, (in, out) dense).

def _fan_in_axes(w):
  return tuple(range(w.ndim - 1))


def mean_abs_scale(w: jax.Array) -> jax.Array:
  """XNOR/ReActNet scale alpha_o: mean |W| over each output channel's fan-in, no gradient."""
  return jax.lax.stop_gradient(jnp.mean(jnp.abs(w), axis=_fan_in_axes(w), keepdims=True))


def irnet_standardize(w: jax.Array, eps: float = 1e-8):
  """IR-Net's Libra-PB: W standardized per output channel, and its power-of-two scale.

  Returns (w_hat, scale) with w_hat = (W - mean_o) / std_o (gradient flows through it) and
  scale = 2 ** round(log2(mean |w_hat|)) per output channel, gradient stopped.
  """
  axes = _fan_in_axes(w)
  centered = w - jnp.mean(w, axis=axes, keepdims=True)
  # ddof=1 as in IR-Net's torch.std.
  n = max(1, int(jnp.size(w) // w.shape[-1]))
  std = jnp.sqrt(jnp.sum(centered ** 2, axis=axes, keepdims=True) / max(n - 1, 1))
  w_hat = centered / (std + eps)
  log_scale = jnp.round(jnp.log2(jnp.mean(jnp.abs(w_hat), axis=axes, keepdims=True) + eps))
  return w_hat, jax.lax.stop_gradient(2.0 ** log_scale)


SCALE_MODES = ("none", "mean_abs", "irnet")


def scale_straight_through(b: jax.Array, scale: jax.Array) -> jax.Array:
  """scale * b in the forward pass, with the gradient of b alone: dL/db = dL/d(scale * b).

  ReActNet's HardBinaryConv writes it as ``(alpha * sign(W)).detach() - clip(W).detach() +
  clip(W)``: the scale is neither differentiated nor multiplied into the gradient. Here
  ``b - stop_gradient(b)`` is exactly 0 in the forward pass, so the value is exactly scale * b.
  """
  return jax.lax.stop_gradient(scale * b) + (b - jax.lax.stop_gradient(b))


def binarize_kernel(w: jax.Array, quantizer: Callable[..., jax.Array],
                    scale_mode: str = "mean_abs", **quantizer_args) -> jax.Array:
  """Binary kernel in the forward pass: scale * sign(W) under the chosen scale mode.

  Gradients: ``mean_abs`` is ReActNet's HardBinaryConv, dL/dW = dL/dW_b * q'(W) where q' is the
  kernel quantizer's surrogate (with ``ste``: 1{|W| <= 1}, exactly HardBinaryConv), alpha left
  out; ``irnet`` is IR-Net's IRConv2d, whose detached power-of-two scale does multiply the
  gradient (``bw = BinaryQuantize(bw) * sw``), and the gradient flows on through the
  standardization.
  """
  if scale_mode == "none":
    return quantizer(w, **quantizer_args)
  if scale_mode == "mean_abs":
    return scale_straight_through(quantizer(w, **quantizer_args),
                                  mean_abs_scale(w).astype(w.dtype))
  if scale_mode == "irnet":
    w_hat, scale = irnet_standardize(w)
    return scale.astype(w.dtype) * quantizer(w_hat, **quantizer_args)
  raise ValueError(f"unknown scale_mode {scale_mode!r}; choose one of {SCALE_MODES}")
