"""Which convolutions a loss term covers, in the originals' definition order.

The BD-BNN release regularizes "every convolution but the first" in PyTorch's module
registration order (``model.named_modules()``), and its per-layer kurtosis target lists follow
that order. Neither Flax's call order (a Bi-Real block computes its downsample before its
conv) nor the parameter tree's sorted keys (``conv_1x1`` before ``conv_3x3``) give it, so the
order is taken from the model:

- the model is traced once (``jax.eval_shape``, nothing computed) while
  ``nn.intercept_methods`` records every module and the convs in the order they are called;
- siblings are then ordered as PyTorch registers them: by first call, except that shortcut /
  downsample modules (a name starting with ``shortcut`` or ``downsample``, the mark the losses
  use) come after their siblings, as a PyTorch block registers its downsample after its convs;
- a module whose children are registered in another order says so in a class attribute
  ``definition_order`` (child names, first to last), e.g. a Flax block that packs two of the
  original's blocks.

The result is a list of ``/``-joined parameter paths (``stage2_block0/conv1/latent_kernel``),
which is all the losses get.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmd_jax import layers, losses

CONV_TYPES = (nn.Conv, layers.BinaryConv)
KERNEL_NAMES = (losses.LATENT_KERNEL, "kernel")


def is_shortcut_name(name: str) -> bool:
  return name.lower().startswith(losses.SHORTCUT_PREFIXES)


def _traced_calls(model: nn.Module, image_shape) -> tuple[list, dict, dict]:
  """(conv module paths in first-call order, {module path: its class}, params shapes)."""
  convs, kinds = [], {(): type(model)}

  def record(method, args, kwargs, context):
    path = tuple(context.module.path)
    kinds.setdefault(path, type(context.module))
    if isinstance(context.module, CONV_TYPES) and path not in convs:
      convs.append(path)
    return method(*args, **kwargs)

  init = functools.partial(model.init, train=False)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(init, jax.random.PRNGKey(0),
                               jnp.zeros((1, *image_shape), jnp.float32))
  return convs, kinds, variables["params"]


def _sort_key(path, kinds, first_call):
  """Per level: the child's rank among its siblings as the original registers them."""
  key = []
  for depth, name in enumerate(path):
    declared = getattr(kinds.get(path[:depth]), "definition_order", None)
    if declared:
      rank = declared.index(name) if name in declared else len(declared)
    else:
      rank = int(is_shortcut_name(name))
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


def conv_kernel_paths(model: nn.Module, image_shape) -> list[str]:
  """Every conv's kernel path, the first included, in the original's definition order."""
  convs, kinds, params = _traced_calls(model, image_shape)
  first_call = {}
  for index, path in enumerate(convs):
    for depth in range(1, len(path) + 1):
      first_call.setdefault(path[:depth], index)
  ordered = sorted(convs, key=lambda p: _sort_key(p, kinds, first_call))
  return ["/".join((*p, _kernel_name(params, p))) for p in ordered]


def kurtosis_layers(model: nn.Module, image_shape, include_shortcuts: bool = True) -> list[str]:
  """The release's kurtosis selection: every conv but the first, in definition order.

  Real-valued shortcut/downsample convs are included unless ``include_shortcuts`` is false.

  Args:
    model: a registered model (any precision: the selection does not depend on it).
    image_shape: (H, W, C) of one input image.
    include_shortcuts: keep shortcut/downsample convs (the release does).

  Returns:
    ``/``-joined parameter paths, in the order per-layer kurtosis targets are given.
  """
  paths = conv_kernel_paths(model, image_shape)[1:]
  if not include_shortcuts:
    paths = [p for p in paths if not any(is_shortcut_name(n) for n in p.split("/")[:-1])]
  if not paths:
    raise ValueError(f"{type(model).__name__} has no convolution besides the first "
                     f"{'' if include_shortcuts else 'that is not a shortcut '}to regularize")
  return paths
