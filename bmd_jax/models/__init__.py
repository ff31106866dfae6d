"""Model registry: ``get_model(name, **kwargs)`` builds a Flax module by name.

Every model is called as ``model.apply(variables, images, train=..., estimator_args=...)``
and returns float32 logits. kwargs set the model's fields: ``num_classes``, ``precision``
(see layers.PRECISIONS), ``input_quantizer``, ``kernel_quantizer``, ``scale_mode``,
``dtype`` and the family's own options.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from bmd_jax.models.resnet_cifar import resnet20
from bmd_jax.models.small_cnn import SmallBinaryCNN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallBinaryCNN,
    "resnet20": resnet20,
}


def list_models() -> list[str]:
  return sorted(MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
  """The model registered as `name`, built with the given fields."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
  try:
    return MODELS[name](**kwargs)
  except TypeError as e:
    raise ValueError(f"model {name!r} does not accept these options {sorted(kwargs)}: {e}") from e
