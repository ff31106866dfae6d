"""Synthetic data: random images and labels, to run a recipe without its data.

``--config.dataset=synthetic`` stands in for the recipe's data set with uniform random uint8
images of its shape (image_size square, channels) and random labels of its class count: a
smoke test of a new TPU pod or GPU node (compilation, sharding, input throughput, checkpoints,
evaluation) before the real data is there. Nothing in it is learnable: accuracy stays at chance.

Records are made on access from (seed, split, index), so a data set of any size costs no memory,
every host and grain worker sees the same record at the same index, and a seed fixes them all.
"""

from __future__ import annotations

import numpy as np

from bmd_jax.infra.config_checks import ConfigValueError

SPLITS = ("train", "eval")


class SyntheticSource:
  """Random-access source of {'image': uint8 image_shape, 'label': int32} (grain's protocol)."""

  def __init__(self, split: str, size: int, image_shape: tuple[int, int, int],
               num_classes: int, seed: int):
    self.split = split
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.seed = seed
    self._key = (seed, SPLITS.index(split))  # the eval split is not the train split again
    self.labels = np.random.default_rng(self._key).integers(
        num_classes, size=size, dtype=np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    rng = np.random.default_rng((*self._key, index))
    image = rng.integers(0, 256, self.image_shape, dtype=np.uint8)
    return {"image": image, "label": self.labels[index]}

  def __repr__(self) -> str:
    # grain checks a restored iterator state against this.
    return (f"SyntheticSource({self.split!r}, {len(self)} images of {self.image_shape}, "
            f"{self.num_classes} classes, seed={self.seed})")


def synthetic_sources(image_shape: tuple[int, int, int], num_classes: int, *,
                      train_examples: int, eval_examples: int, seed: int = 0):
  """(train, eval) SyntheticSources."""
  for name, value, meaning in (("synthetic_train_examples", train_examples, "train examples"),
                               ("synthetic_eval_examples", eval_examples, "eval examples"),
                               ("synthetic_classes", num_classes, "classes")):
    if value <= 0:
      raise ConfigValueError(f"config.{name}={value}: it counts the synthetic data's {meaning} "
                             f"and must be a positive integer; e.g. --config.{name}=100")
  return (SyntheticSource("train", train_examples, image_shape, num_classes, seed),
          SyntheticSource("eval", eval_examples, image_shape, num_classes, seed))
