"""Losses of BD-BNN: cross-entropy, kurtosis regularization, weight distribution mimicking, and
output distillation.

Everything here is a pure ``jax.numpy`` function of arrays or parameter pytrees (plain nested
dicts or Flax ``FrozenDict``s); nothing imports a model. Which layers a term covers, and in
what order, is the model's knowledge (its definition order and its convs' ``shortcut`` marks):
the caller passes their parameter paths (``models.kurtosis_layers``: every conv but the first,
real downsample convs included, in the original's definition order; ``models.wdm_layers``: the
binarized layers, shortcuts left out). Without such a list, binarized layers are found by the
convention of ``bmd_jax.core.layers``: a binary conv / dense layer stores its real-valued latent
weight as a param named ``latent_kernel``; full-precision layers (first conv, classifier, real
downsample convs) use Flax's ``kernel``; a bare tree has no marks, so a shortcut conv is then
one under a module named ``shortcut*`` or ``downsample*``.

Formulas: docs/METHOD.md sections 3-5 (the authors' release where the paper is silent).
Reductions are computed in float32 (or wider) whatever the parameter dtype, because fourth
powers and log-ratios of bf16 values lose most of their precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bmd_jax.core import layers, quantizers

Array = jax.Array
PyTree = Any

LATENT_KERNEL = layers.LATENT_KERNEL  # the one definition is in layers.py
SHORTCUT_PREFIXES = ("shortcut", "downsample")
KURTOSIS_MODES = ("avg", "sum", "max")
KURTOSIS_VIEWS = ("latent", "standardized")


def _to_float32(x) -> Array:
  """At least float32: keeps float64 when x64 is on, lifts bf16/f16 (and ints) to float32."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ------------------------------------------------------------------------------------------------
# Classification losses.


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy with integer class labels.

  Args:
    logits: ``(..., num_classes)`` unnormalized scores.
    labels: ``(...)`` integer labels in ``[0, num_classes)``.

  Returns:
    Scalar float32 mean over all leading positions.
  """
  return optax.softmax_cross_entropy_with_integer_labels(_to_float32(logits), labels).mean()


def distillation_loss(student_logits: Array, teacher_logits: Array) -> Array:
  """ReActNet's distributional loss: ``-mean_n sum_c softmax(zT)_c * log_softmax(zS)_c``.

  This is the cross-entropy of the student against the teacher's soft predictions. The teacher
  is frozen: its logits pass through ``stop_gradient`` so only the student receives a gradient,
  even when both come out of one traced function.

  Args:
    student_logits: ``(..., num_classes)``.
    teacher_logits: same shape as ``student_logits``.

  Returns:
    Scalar float32 mean over all leading positions.
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"distillation_loss: student logits {student_logits.shape} and teacher "
                     f"logits {teacher_logits.shape} must have the same shape.")
  soft_targets = jax.nn.softmax(jax.lax.stop_gradient(_to_float32(teacher_logits)), axis=-1)
  return optax.softmax_cross_entropy(_to_float32(student_logits), soft_targets).mean()


# ------------------------------------------------------------------------------------------------
# Kurtosis regularization (docs/METHOD.md section 3).


def kurtosis(w: Array) -> Array:
  """Kurtosis of the whole tensor ``w``: ``mean(((w - mean(w)) / std(w))^4)``.

  ``std`` uses Bessel's correction (``ddof=1``), as the release does (``torch.std``). Note this
  is neither scipy's biased (``bias=True``) nor its unbiased (``bias=False``) estimator: it
  equals scipy's ``kurtosis(w, fisher=False, bias=True) * ((n - 1) / n)^2``. Reference values:
  a symmetric +-1 two-point distribution gives ``((n - 1) / n)^2`` (about 1, the minimum),
  uniform about 1.8, Gaussian about 3.

  The value is computed in float32 even for bf16 input. A constant tensor (zero variance) or a
  single element gives NaN, as in the release.

  Args:
    w: any array with at least two elements.

  Returns:
    Scalar (float32, or float64 for float64 input).
  """
  w = _to_float32(w)
  centered = w - jnp.mean(w)
  variance = jnp.sum(centered**2) / (w.size - 1)
  # m4 / s^4 is the same number as mean((centered / s)^4) but needs no division of the tensor.
  return jnp.mean(centered**4) / variance**2


def standardized(w: Array) -> Array:
  """``w`` as IR-Net's sign() sees it: each output channel (the last axis) centred and divided
  by its standard deviation (``N - 1`` divisor), ``quantizers.irnet_standardize``'s ``w_hat``,
  in float32 or wider. The gradient flows through the standardization, as in the forward pass.

  Kurtosis is invariant to one affine map of the whole tensor, not to one per channel: channels
  of different means or scales make the raw tensor's kurtosis differ from this view's.
  """
  return quantizers.irnet_standardize(_to_float32(w))[0]


def _viewed(w: Array, view: str) -> Array:
  return standardized(w) if view == "standardized" else w


# ------------------------------------------------------------------------------------------------
# Finding the binarized layers in a parameter tree.


def _key_name(key) -> str:
  """Name of one jax key-path entry (DictKey, GetAttrKey, SequenceKey, ...)."""
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _is_shortcut(path: tuple[str, ...]) -> bool:
  """A module on the path is named ``shortcut*`` or ``downsample*`` (either case)."""
  return any(name.lower().startswith(SHORTCUT_PREFIXES) for name in path[:-1])


def binarized_kernels(params: PyTree, include_shortcuts: bool = True) -> dict[str, Array]:
  """The latent weights of every binarized layer, by path.

  A leaf named ``latent_kernel`` is a binarized layer's weight; ``kernel`` leaves (first conv,
  classifier, real-valued downsample convs) are full precision and left out. A binarized conv
  whose path has a module named ``shortcut*`` or ``downsample*`` (case-insensitive) is a
  shortcut conv, kept only when ``include_shortcuts`` is true.

  Works on plain nested dicts, Flax ``FrozenDict``s and boxed (``nn.Partitioned``) params.

  Args:
    params: a parameter pytree (e.g. ``variables["params"]``; a whole ``variables`` dict works
      too, its paths then start with ``params/``).
    include_shortcuts: keep binarized shortcut/downsample convs.

  Returns:
    ``{"stage1_block0/conv1/latent_kernel": array, ...}``: keys are the ``/``-joined paths in
    sorted (lexicographic) order, which is not the original's definition order: training
    passes ``kurtosis_loss`` the model's own list (``models.kurtosis_layers``) instead.

  Raises:
    ValueError: the tree holds no ``latent_kernel`` (e.g. a full-precision model or a teacher
      built without binarized layers), or only shortcut ones when they are excluded.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))
  found = {}
  excluded = []
  for key_path, leaf in leaves:
    path = tuple(_key_name(k) for k in key_path)
    if not path or path[-1] != LATENT_KERNEL:
      continue
    name = "/".join(path)
    if not include_shortcuts and _is_shortcut(path):
      excluded.append(name)
      continue
    found[name] = leaf
  if not found:
    if excluded:
      raise ValueError(
          f"binarized_kernels: every binarized layer is a shortcut/downsample conv "
          f"({', '.join(sorted(excluded))}) and include_shortcuts=False excludes them; "
          f"pass include_shortcuts=True.")
    raise ValueError(
        f"binarized_kernels: the model has no binarized layers: no param named "
        f"'{LATENT_KERNEL}' in the tree. Kurtosis regularization and WDM apply to the latent "
        f"weights of bmd_jax.core.layers.BinaryConv/BinaryDense; pass the params of a model built "
        f"with them (full-precision layers use 'kernel' and are not regularized).")
  return {name: found[name] for name in sorted(found)}


def kernels_at(params: PyTree, paths: Sequence[str]) -> dict[str, Array]:
  """The leaves of ``params`` at ``/``-joined ``paths``, as a dict in the order of ``paths``.

  Raises:
    ValueError: a path is not in the tree (a layer list made for another model).
  """
  flat = {"/".join(_key_name(k) for k in key_path): leaf
          for key_path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]}
  missing = [p for p in paths if p not in flat]
  if missing:
    raise ValueError(f"kernels_at: no parameter at {missing}; the layer list was made for "
                     f"another model. Kernels in the tree: "
                     f"{[k for k in flat if k.endswith('kernel')]}")
  return {p: flat[p] for p in paths}


def _selected_kernels(params: PyTree, layers: Sequence[str] | None,
                      include_shortcuts: bool) -> dict[str, Array]:
  """The kernels at the model's list of paths, or without one the binarized ones (found by
  name: a bare parameter tree carries no shortcut marks)."""
  if layers is None:
    return binarized_kernels(params, include_shortcuts=include_shortcuts)
  return kernels_at(params, layers)


# ------------------------------------------------------------------------------------------------
# Kurtosis loss.


def _kurtosis_targets(target, names: Sequence[str]) -> Array:
  """One target per layer, as a float32 vector in the order of ``names``."""
  if isinstance(target, Mapping):
    missing = [n for n in names if n not in target]
    unknown = sorted(set(target) - set(names))
    if missing or unknown:
      raise ValueError(
          f"kurtosis_loss: the target dict must name exactly the regularized layers. "
          f"Missing: {missing}; not regularized layers: {unknown}. "
          f"Regularized layers: {list(names)}.")
    return jnp.stack([_to_float32(target[n]) for n in names])
  target = _to_float32(target)
  if target.ndim == 0:
    return jnp.broadcast_to(target, (len(names),))
  if target.shape != (len(names),):
    raise ValueError(
        f"kurtosis_loss: got {target.shape[0] if target.ndim == 1 else target.shape} targets "
        f"for {len(names)} regularized layers; give one scalar, one value per layer in this "
        f"order {list(names)}, or a dict from layer path to target.")
  return target


def kurtosis_loss(params: PyTree, target=1.8, mode: str = "avg", include_shortcuts: bool = True,
                  layers: Sequence[str] | None = None,
                  view: str = "latent") -> tuple[Array, dict[str, Array]]:
  """Kurtosis regularization ``L_K`` over the layers ``layers`` (or the binarized ones).

  Per layer ``l_i = (Kurt(W_i) - K_T,i)^2``; ``L_K`` is their mean (``avg``, the release
  default), ``sum`` or ``max``. Pushing the latent weights' kurtosis to about 1.8 or below makes
  their distribution bi-modal, which ``sign()`` preserves best (docs/METHOD.md section 3).

  Args:
    params: parameter pytree.
    target: the target kurtosis: a scalar for all layers, a sequence with one value per
      regularized layer in their order, or a dict path -> target that names every
      regularized layer.
    mode: ``"avg"``, ``"sum"`` or ``"max"``.
    include_shortcuts: without ``layers``, regularize binarized convs under a module named
      ``shortcut*`` or ``downsample*`` too.
    layers: ``/``-joined parameter paths of the regularized kernels, in order (e.g.
      ``models.kurtosis_layers(model, image_shape)``, the release's selection). None: the
      binarized layers (``binarized_kernels``, sorted order).
    view: ``"latent"`` (the release's): the kurtosis of the raw latent tensor;
      ``"standardized"``: of the per-output-channel standardized tensor (``standardized``),
      the values IR-Net scaling's sign() sees.

  Returns:
    ``(loss, per_layer)``: the scalar loss and a dict path -> kurtosis of that layer (in the
    chosen view; for logging).
  """
  if mode not in KURTOSIS_MODES:
    raise ValueError(f"kurtosis_loss: unknown mode {mode!r}; known modes: {KURTOSIS_MODES}.")
  if view not in KURTOSIS_VIEWS:
    raise ValueError(f"kurtosis_loss: unknown view {view!r}; known views: {KURTOSIS_VIEWS}.")
  kernels = _selected_kernels(params, layers, include_shortcuts)
  names = list(kernels)
  targets = _kurtosis_targets(target, names)
  per_layer = {name: kurtosis(_viewed(w, view)) for name, w in kernels.items()}
  # Layers have different shapes, so kurtosis is taken per layer; the rest is one vector op.
  layer_losses = (jnp.stack(list(per_layer.values())) - targets) ** 2
  reduce = {"avg": jnp.mean, "sum": jnp.sum, "max": jnp.max}[mode]
  return reduce(layer_losses), per_layer


# ------------------------------------------------------------------------------------------------
# Weight distribution mimicking (docs/METHOD.md section 4). Each form sums its per-layer values over
# layers, as the release does (it adds one KLDivLoss per layer); a deeper network therefore gets
# a larger WDM term for the same per-layer mismatch, which the weight beta absorbs.


def _matching_layers(teacher: Mapping[str, Array], student: Mapping[str, Array]):
  """(name, float32 teacher with stop_gradient, float32 student) per layer, checked to match."""
  missing = sorted(set(teacher) - set(student))
  extra = sorted(set(student) - set(teacher))
  if missing or extra:
    raise ValueError(
        f"WDM: teacher and student layers differ. In the teacher only: {missing}; in the "
        f"student only: {extra}. Teacher and student must be the same architecture.")
  if not teacher:
    raise ValueError("WDM: no layers to compare (empty kernel dicts).")
  layers = []
  for name in sorted(teacher):
    t, s = teacher[name], student[name]
    if t.shape != s.shape:
      raise ValueError(f"WDM: layer {name!r} has teacher shape {t.shape} but student shape "
                       f"{s.shape}.")
    # The teacher is frozen; stopping its gradient here keeps that true for every form.
    layers.append((name, jax.lax.stop_gradient(_to_float32(t)), _to_float32(s)))
  return layers


def _by_output_channel(w: Array, name: str) -> Array:
  """``(fan_in, out)`` view: Flax conv kernels are HWIO and dense kernels (in, out)."""
  if w.ndim < 2:
    raise ValueError(f"WDM softmax_kl: layer {name!r} has shape {w.shape}; a kernel needs an "
                     f"input and an output axis.")
  return w.reshape(-1, w.shape[-1])


# How softmax_kl reduces a layer's per-output-channel KLs (each an expectation over the
# fan-in F) to one number; docs/METHOD.md section 4 derives the gradient each one gives.
WDM_REDUCTIONS: dict[str, Callable[[Array, int], Array]] = {
    # The mean over output channels: a weight's gradient is about (w_S - w_T) / N_layer, the
    # size of weight decay (the only reduction before 2026-12-06, so stored configs read it).
    "channel_mean": lambda kl, fan_in: jnp.mean(kl),
    "channel_sum": lambda kl, fan_in: jnp.sum(kl),
    # Every weight counts once (F * sum over channels): a weight's gradient is about
    # w_S - w_T, an L2 pull towards the teacher, comparable with cross-entropy's.
    "weight_sum": lambda kl, fan_in: fan_in * jnp.sum(kl),
}
WDM_LEGACY_REDUCTION = "channel_mean"


def wdm_softmax_kl(teacher: Mapping[str, Array], student: Mapping[str, Array],
                   temperature: float = 4.0, reduction: str = WDM_LEGACY_REDUCTION) -> Array:
  """WDM as per-output-channel softmax KL (the project's default form).

  For each layer the kernel is viewed as ``(fan_in, out)``; for every output channel the
  weights over its fan-in become a distribution ``softmax(W / T)`` and the channel's value is
  ``KL(softmax(W_T / T) || softmax(W_S / T))``, multiplied by ``T^2`` (so the gradient scale
  does not shrink as ``T`` grows, as in Hinton's distillation). Zero exactly when the student
  equals the teacher (up to a shift per channel), and its gradient pulls the student toward it.

  ``reduction`` turns a layer's channel values into one number: ``channel_mean`` (their mean;
  before 2026-12-06 the only one), ``channel_sum`` (their sum) or ``weight_sum`` (``fan_in``
  times their sum). For weights small next to ``T``, ``T^2 KL`` is about half the variance of
  ``W_S - W_T`` over the fan-in, so a weight's gradient is about ``(w_S - w_T - channel mean)``
  divided by ``N_layer``, by ``fan_in``, or by 1 (docs/METHOD.md section 4).

  Args:
    teacher, student: dicts path -> kernel, as returned by ``binarized_kernels``; same keys and
      shapes. The teacher gets ``stop_gradient``.
    temperature: ``T``; the release passes 4.
    reduction: a key of ``WDM_REDUCTIONS``.

  Returns:
    Scalar: the sum over layers.
  """
  if reduction not in WDM_REDUCTIONS:
    raise ValueError(f"WDM softmax_kl: unknown reduction {reduction!r}; known reductions: "
                     f"{sorted(WDM_REDUCTIONS)}.")
  reduce = WDM_REDUCTIONS[reduction]
  total = jnp.zeros((), jnp.float32)
  for name, t, s in _matching_layers(teacher, student):
    log_p_t = jax.nn.log_softmax(_by_output_channel(t, name) / temperature, axis=0)
    log_p_s = jax.nn.log_softmax(_by_output_channel(s, name) / temperature, axis=0)
    kl_per_channel = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=0)
    total = total + reduce(kl_per_channel, log_p_t.shape[0]) * temperature**2
  return total


def _soft_histogram(values: Array, centers: Array, bandwidth: Array, eps: float) -> Array:
  """Gaussian kernel-density mass at each bin center, normalized to a probability vector."""
  # One bin at a time, rematerialized in the backward pass: the n x bins matrix of kernel
  # values is never stored (a broadcast version needs ~600 MB of temporaries for the gradient
  # of one 3x3x256x256 kernel on CPU; this needs O(n), and ran 12x faster there).
  # prevent_cse=False: inside a loop CSE cannot merge the recomputation away (JAX's advice for
  # checkpoint under scan/map), and the barrier it would add there can abort XLA:CPU when the
  # train step keeps barriers (cpu_barriers.py).
  bump_mass = jax.checkpoint(
      lambda center: jnp.sum(jnp.exp(-0.5 * ((values - center) / bandwidth) ** 2)),
      prevent_cse=False)
  density = jax.lax.map(bump_mass, centers)
  p = density / jnp.sum(density)
  # eps keeps log p finite in empty bins; renormalize so p stays a distribution.
  return (p + eps) / (1.0 + eps * p.shape[0])


def wdm_histogram(teacher: Mapping[str, Array], student: Mapping[str, Array], bins: int = 64,
                  bandwidth: float | None = None, eps: float = 1e-6) -> Array:
  """WDM as KL between differentiable histograms of all weight values of a layer.

  The literal "match the weight distribution" form: per layer, all teacher values and all
  student values (ignoring which channel they belong to) are turned into histograms over the
  same ``bins`` bins, and the loss is ``KL(p_T || p_S)``.

  Histogram: ``bins`` equal bins span ``[min, max]`` of the teacher's and student's values
  together, so student weights outside the teacher's range still count (their mass is taken
  from where the teacher has its mass, which raises the loss); the range is under
  ``stop_gradient``. A student weight far from all teacher mass gets only a weak gradient, as
  its bump is about one bin wide. Each value adds a Gaussian bump
  ``exp(-0.5 ((w - c_k) / h)^2)`` to every bin center ``c_k`` (a kernel-density estimate, which
  is differentiable where hard binning is not); the masses are normalized to sum to 1, ``eps``
  is added to every bin and the vector renormalized. ``h`` (``bandwidth``, in weight units)
  defaults to the bin width. Zero when the student equals the teacher.

  Cost: ``O(n * bins)`` time and ``O(n)`` memory per layer (a loop over bins, recomputed in
  the backward pass, so no ``n x bins`` matrix is stored).

  Args:
    teacher, student: dicts path -> kernel (same keys and shapes); teacher gets stop_gradient.
    bins: number of bins.
    bandwidth: Gaussian kernel width in weight units; default: the bin width.
    eps: floor added to every bin's probability.

  Returns:
    Scalar: the sum over layers.
  """
  total = jnp.zeros((), jnp.float32)
  for _, t, s in _matching_layers(teacher, student):
    t, s = t.ravel(), s.ravel()
    low = jax.lax.stop_gradient(jnp.minimum(t.min(), s.min()))
    high = jax.lax.stop_gradient(jnp.maximum(t.max(), s.max()))
    # A constant layer would give a zero-width range; any positive width then works.
    width = jnp.maximum(high - low, 1e-12) / bins
    centers = low + (jnp.arange(bins, dtype=t.dtype) + 0.5) * width
    h = width if bandwidth is None else jnp.asarray(bandwidth, t.dtype)
    p_t = _soft_histogram(t, centers, h, eps)
    p_s = _soft_histogram(s, centers, h, eps)
    total = total + jnp.sum(p_t * (jnp.log(p_t) - jnp.log(p_s)))
  return total


def wdm_released(teacher: Mapping[str, Array], student: Mapping[str, Array]) -> Array:
  """WDM exactly as in the authors' release, for parity.

  Per layer, PyTorch's ``KLDivLoss(reduction='mean', log_target=True)(input=W_S, target=W_T)``
  on the raw weights: ``mean_j exp(wT_j) * (wT_j - wS_j)`` over all ``N`` elements; summed over
  layers.

  Beware: this is linear in the student. Its gradient with respect to the student is
  ``-exp(wT) / N``, which does not depend on the student at all, so it does not pull the student
  toward the teacher; it only pushes every student weight up at a rate set by the teacher.

  Args:
    teacher, student: dicts path -> kernel (same keys and shapes); teacher gets stop_gradient.

  Returns:
    Scalar: the sum over layers.
  """
  total = jnp.zeros((), jnp.float32)
  for _, t, s in _matching_layers(teacher, student):
    total = total + jnp.mean(jnp.exp(t) * (t - s))
  return total


WDM_FORMS: dict[str, Callable[..., Array]] = {
    "softmax_kl": wdm_softmax_kl,
    "histogram": wdm_histogram,
    "released": wdm_released,
}


def wdm_loss(teacher_params: PyTree, student_params: PyTree, form: str = "softmax_kl",
             include_shortcuts: bool = False, layers: Sequence[str] | None = None,
             **kwargs) -> Array:
  """Weight distribution mimicking loss between a teacher's and a student's param trees.

  Compares the layers ``layers`` (or the binarized ones, ``latent_kernel`` leaves) of both
  trees with the WDM form named ``form`` (a key of ``WDM_FORMS``). The teacher must have the
  same architecture, i.e. the same layer paths. Shortcut convs are excluded by default, as in
  the release.

  Args:
    teacher_params, student_params: parameter pytrees.
    form: ``"softmax_kl"`` (default), ``"histogram"`` or ``"released"``.
    include_shortcuts: without ``layers``, also mimic binarized convs under a module named
      ``shortcut*`` or ``downsample*``.
    layers: ``/``-joined parameter paths of the mimicked kernels (e.g.
      ``models.wdm_layers(model, image_shape)``, which reads the models' shortcut marks).
      None: the binarized layers (``binarized_kernels``).
    **kwargs: passed to the form (``temperature`` and ``reduction`` for softmax_kl; ``bins``,
      ``bandwidth``, ``eps`` for histogram).

  Returns:
    Scalar: the sum over layers.
  """
  if form not in WDM_FORMS:
    raise ValueError(f"wdm_loss: unknown form {form!r}; known forms: {sorted(WDM_FORMS)}.")
  teacher = _selected_kernels(teacher_params, layers, include_shortcuts)
  student = _selected_kernels(student_params, layers, include_shortcuts)
  return WDM_FORMS[form](teacher, student, **kwargs)
