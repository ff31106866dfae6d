"""The built-in data set: scikit-learn's handwritten digits (8x8 grey, 10 classes).

It ships with scikit-learn, so the main job runs offline in about a minute. The train/test
split is fixed by a seed, stratified by class, so every run and every host sees the same one.
"""

from __future__ import annotations

import numpy as np

from bmd_jax.data.in_memory import ArraySource

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def digits_sources(test_fraction: float = 0.2, split_seed: int = 0):
  """(train, test) ArraySources of the digits; pixel values scaled to [0, 1]."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels)
  return ArraySource(x_train, y_train), ArraySource(x_test, y_test)
