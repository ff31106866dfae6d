"""Which convolutions a loss term covers, in the originals' definition order.

The BD-BNN release regularizes "every convolution but the first" in PyTorch's module
registration order (``model.named_modules()``), and its per-layer kurtosis target lists follow
that order. Neither Flax's call order (a Bi-Real block computes its downsample before its
conv) nor the parameter tree's sorted keys (``conv_1x1`` before ``conv_3x3``) give it, so the
order is taken from the model:

- the model is traced once (``jax.eval_shape``, nothing computed) while
  ``nn.intercept_methods`` records every module, the convs in the order they are called and
  which convs are marked as shortcuts (their field ``shortcut``, layers.py);
- siblings are then ordered as PyTorch registers them: by first call, except that shortcut
  modules (a marked conv, or a submodule all of whose convs are marked, e.g. IR-Net's
  ``shortcut``: a 1x1 conv and its BN) come after their siblings, as a PyTorch block registers
  its downsample after its convs;
- a module whose children are registered in another order says so in a class attribute
  ``definition_order`` (child names, first to last), e.g. a Flax block that packs two of the
  original's blocks.

The result is a list of ``/``-joined parameter paths (``stage2_block0/conv1/latent_kernel``),
which is all the losses get; the mark, not a module's name, says which convs are shortcuts.

A layer's own ``regularize`` field (layers.py) overrides the rule for it in both lists: True
covers it (a first conv, a shortcut, a ``BinaryDense``), False leaves it out. The registered
models set none, so their lists are the rule's.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmd_jax.core import layers, losses

CONV_TYPES = (nn.Conv, layers.BinaryConv)
# Layers the rule never covers but that a ``regularize=True`` may bring in.
OTHER_LAYER_TYPES = (layers.BinaryDense,)
KERNEL_NAMES = (losses.LATENT_KERNEL, "kernel")


@dataclasses.dataclass
class _Trace:
  """What one shape-only init of the model shows of its modules."""

  convs: list  # conv module paths (and those of other layers marked regularize=True), in
  # first-call order
  kinds: dict  # module path -> its class
  shortcuts: set  # paths of the convs marked as shortcuts
  marks: dict  # module path -> its regularize field, where it is set
  params: dict  # parameter shapes


def _traced_calls(model: nn.Module, image_shape) -> _Trace:
  trace = _Trace([], {(): type(model)}, set(), {}, {})

  def record(method, args, kwargs, context):
    module = context.module
    path = tuple(module.path)
    trace.kinds.setdefault(path, type(module))
    layer = isinstance(module, (*CONV_TYPES, *OTHER_LAYER_TYPES))
    mark = layers.regularize_mark(module) if layer else None
    if mark is not None:
      trace.marks[path] = mark
    # Only a dense layer marked in joins the ordered list, so that the convs' order (and the
    # first conv) stay those of the originals wherever nothing is marked.
    ordered = isinstance(module, CONV_TYPES) or (layer and mark)
    if ordered and path not in trace.convs:
      trace.convs.append(path)
      if layers.is_shortcut(module):
        trace.shortcuts.add(path)
    return method(*args, **kwargs)

  init = functools.partial(model.init, train=False)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(init, jax.random.PRNGKey(0),
                               jnp.zeros((1, *image_shape), jnp.float32))
  trace.params = variables["params"]
  return trace


def _shortcut_modules(trace: _Trace) -> set:
  """Paths of the modules whose every conv is marked: the shortcut convs and the submodules
  that hold nothing else (a PyTorch block's ``downsample`` Sequential)."""
  modules = {conv[:depth] for conv in trace.convs for depth in range(1, len(conv) + 1)}
  return {m for m in modules
          if all(c in trace.shortcuts for c in trace.convs if c[:len(m)] == m)}


def _sort_key(path, kinds, first_call, shortcut_modules):
  """Per level: the child's rank among its siblings as the original registers them."""
  key = []
  for depth, name in enumerate(path):
    declared = getattr(kinds.get(path[:depth]), "definition_order", None)
    if declared:
      rank = declared.index(name) if name in declared else len(declared)
    else:
      rank = int(path[:depth + 1] in shortcut_modules)
    key.append((rank, first_call[path[:depth + 1]]))
  return key


def _kernel_name(params, path) -> str:
  node = params
  for name in path:
    node = node[name]
  for kernel in KERNEL_NAMES:
    if kernel in node:
      return kernel
  raise ValueError(f"conv {'/'.join(path)} has none of the kernel params {KERNEL_NAMES}")


@dataclasses.dataclass(frozen=True)
class _Layer:
  """One layer of the ordered list."""

  path: str  # its kernel's parameter path
  conv: bool
  shortcut: bool
  regularize: bool | None  # its own mark


def _ordered_layers(model: nn.Module, image_shape) -> list[_Layer]:
  """Every conv (and every other layer marked regularize=True), in the original's definition
  order."""
  trace = _traced_calls(model, image_shape)
  first_call = {}
  for index, path in enumerate(trace.convs):
    for depth in range(1, len(path) + 1):
      first_call.setdefault(path[:depth], index)
  shortcut_modules = _shortcut_modules(trace)
  ordered = sorted(trace.convs,
                   key=lambda p: _sort_key(p, trace.kinds, first_call, shortcut_modules))
  return [_Layer("/".join((*p, _kernel_name(trace.params, p))),
                 issubclass(trace.kinds[p], CONV_TYPES), p in trace.shortcuts,
                 trace.marks.get(p)) for p in ordered]


def conv_kernel_paths(model: nn.Module, image_shape) -> list[str]:
  """Every conv's kernel path, the first included, in the original's definition order."""
  return [layer.path for layer in _ordered_layers(model, image_shape) if layer.conv]


def kurtosis_layers(model: nn.Module, image_shape, include_shortcuts: bool = True) -> list[str]:
  """The release's kurtosis selection: every conv but the first, in definition order.

  Shortcut convs (those marked ``shortcut=True``, layers.py) are included unless
  ``include_shortcuts`` is false. A layer's own ``regularize`` field, where set, decides for
  it instead (True: in, even the first conv, a shortcut or a BinaryDense; False: out).

  Args:
    model: a registered model (any precision: the selection does not depend on it).
    image_shape: (H, W, C) of one input image.
    include_shortcuts: keep the marked shortcut convs (the release keeps its downsample convs).

  Returns:
    ``/``-joined parameter paths, in the order per-layer kurtosis targets are given.
  """
  ordered = _ordered_layers(model, image_shape)
  first_conv = next((layer for layer in ordered if layer.conv), None)

  def by_rule(layer):
    return (layer.conv and layer is not first_conv
            and (include_shortcuts or not layer.shortcut))

  paths = [layer.path for layer in ordered
           if (by_rule(layer) if layer.regularize is None else layer.regularize)]
  if not paths:
    raise ValueError(f"{type(model).__name__} has no convolution besides the first "
                     f"{'' if include_shortcuts else 'that is not a shortcut '}to regularize "
                     "(nor a layer marked regularize=True)")
  return paths


def wdm_layers(model: nn.Module, image_shape, include_shortcuts: bool = False) -> list[str]:
  """The release's WDM selection: every binarized layer (a ``latent_kernel``), sorted.

  Marked shortcut convs are left out unless ``include_shortcuts`` is true (the release leaves
  its downsample convs out; on the registered models they are real, so never binarized). A
  layer's own ``regularize`` field, where set, decides for it instead (True brings in a real
  conv too).

  Returns:
    ``/``-joined parameter paths, in the sorted order ``losses.binarized_kernels`` gives.
  """
  trace = _traced_calls(model, image_shape)
  shortcuts = {"/".join((*p, layers.LATENT_KERNEL)) for p in trace.shortcuts}
  marks = {"/".join((*p, _kernel_name(trace.params, p))): mark
           for p, mark in trace.marks.items()}
  paths = [p for p in losses.binarized_kernels(trace.params)
           if marks.get(p, include_shortcuts or p not in shortcuts)]
  paths = sorted({*paths, *(p for p, mark in marks.items() if mark)})
  if not paths:
    raise ValueError(f"{type(model).__name__}: every binarized layer is a shortcut conv or "
                     "marked regularize=False, so WDM has no layer to mimic; include the "
                     "shortcuts (loss.wdm.include_shortcuts) or mark a layer regularize=True")
  return paths
