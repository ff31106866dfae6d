"""Model registry: ``get_model(name, **kwargs)`` builds a Flax module by name.

Every model is called as ``model.apply(variables, images, train=..., estimator_args=...)``
and returns float32 logits. kwargs set the model's fields: ``num_classes``, ``precision``
(see layers.PRECISIONS), ``input_quantizer``, ``kernel_quantizer``, ``scale_mode``,
``dtype`` and the family's own options (``react`` for the ImageNet ResNets and ReActNet-A).

    small_cnn       digits (8x8)           models/small_cnn.py
    resnet20        CIFAR, IR-Net's        models/resnet_cifar.py
    resnet18_cifar  CIFAR, IR-Net's        models/resnet_cifar.py
    vgg_small       CIFAR, IR-Net style    models/vgg.py
    resnet18        ImageNet, Bi-Real      models/resnet_imagenet.py
    resnet34        ImageNet, Bi-Real      models/resnet_imagenet.py
    resnet34_torchvision  ImageNet, real   models/resnet_torchvision.py (ReActNet's teacher)
    reactnet_a      ImageNet, ReActNet-A   models/reactnet.py

A name may also be an import path, ``package.module:Attribute`` (components.py): a user's
model, a Flax module or a function returning one, taking the fields above and its own. A
config that names it so is rebuilt by every tool, in any process where the module imports
(docs/EXTENDING.md); ``register(name, factory)`` adds a name in this process only.

The parameter tree does not depend on the precision, so a model trained with binary
activations (step 1) initializes the binary model (step 2) as it is.

``from_checkpoint(config, params)`` rebuilds a checkpoint's model (the tools' way).
``kurtosis_layers(model, image_shape)`` lists the convs a loss term covers, in the originals'
definition order (models/layer_order.py).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmd_jax.core import components, quantizers
from bmd_jax.models.layer_order import conv_kernel_paths, kurtosis_layers, wdm_layers
from bmd_jax.models.reactnet import reactnet_a
from bmd_jax.models.resnet_cifar import resnet18_cifar, resnet20
from bmd_jax.models.resnet_imagenet import resnet18, resnet34
from bmd_jax.models.resnet_torchvision import resnet34_torchvision
from bmd_jax.models.small_cnn import SmallBinaryCNN
from bmd_jax.models.vgg import vgg_small

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallBinaryCNN,
    "resnet20": resnet20,
    "resnet18_cifar": resnet18_cifar,
    "vgg_small": vgg_small,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet34_torchvision": resnet34_torchvision,
    "reactnet_a": reactnet_a,
}


# Real-valued networks, registered as distillation teachers: they have no binary layers, so
# they take no binary options and only precision 'full'.
REAL_VALUED_MODELS = ("resnet34_torchvision",)


def list_models(binary_only: bool = False) -> list[str]:
  """Registered names; binary_only leaves out the real-valued networks."""
  return sorted(n for n in MODELS if not (binary_only and n in REAL_VALUED_MODELS))


def register(name: str, factory: Callable[..., nn.Module], replace: bool = False):
  """Registers a model in this process (a notebook's way; a config read by other processes
  names it by its import path instead). Returns `factory`."""
  return components.register(MODELS, name, factory, "model", replace)


def get_model(name: str, **kwargs) -> nn.Module:
  """The model registered as `name`, or at the import path `name`, built with the fields."""
  factory = components.lookup(MODELS, name, "model")
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise ValueError(f"model {name!r} does not accept these options {sorted(kwargs)}: {e}") from e


def from_config(model_config: Mapping[str, Any], num_classes: int, **overrides) -> nn.Module:
  """The model a config's ``model`` section describes: its ``name`` and the fields to pass.

  A ``dtype`` given as a string ('bfloat16') becomes a jnp dtype; ``overrides`` (e.g.
  ``precision='binary'``) replace config fields.
  """
  fields = {**dict(model_config), **overrides}
  name = fields.pop("name")
  # The quantizers are looked up now, so that a wrong name fails before any tracing, and an
  # import path is imported before the train step asks for every estimator's arguments.
  for field in ("input_quantizer", "kernel_quantizer"):
    if field in fields:
      quantizers.get_estimator(fields[field], what=f"model.{field}")
  if isinstance(fields.get("dtype"), str):
    fields["dtype"] = jnp.dtype(fields["dtype"])
  return get_model(name, num_classes=num_classes, **fields)


def create_model(config, num_classes: int, precision: str | None = None) -> nn.Module:
  """The model a run's config names (config.model), in config.model.precision unless
  `precision` overrides it."""
  overrides = {} if precision is None else {"precision": precision}
  return from_config(config.model, num_classes, **overrides)


def from_checkpoint(config, params: Mapping[str, Any], precision: str | None = None):
  """(model, image shape (H, W, C)) of a checkpoint: its config's model, with the number of
  classes read from the checkpoint's 'classifier' layer (every registered model has one), so
  no data set is needed to tell it."""
  classifier = params.get("classifier", {}).get("kernel")
  num_classes = classifier.shape[-1] if classifier is not None else config.get("num_classes")
  if num_classes is None:
    raise ValueError("cannot tell the number of classes: the checkpoint has no 'classifier' "
                     "layer and its config no num_classes")
  model = create_model(config, int(num_classes), precision)
  return model, (config.image_size, config.image_size, config.channels)


def variable_shapes(model: nn.Module, image_shape) -> dict:
  """{'params', 'batch_stats'} of `model` as shapes only: traced, never compiled or run."""
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def initialized(rng, model: nn.Module, image_shape):
  """(params, batch_stats) of `model` for inputs of shape image_shape (H, W, C)."""
  variables = jax.jit(functools.partial(model.init, train=False))(
      rng, jnp.zeros((1, *image_shape), jnp.float32))
  return variables["params"], variables.get("batch_stats", {})
