"""Per-record transforms, as grain operations: the recipes' augmentation and normalization.

Each returns {'image': float32 HWC normalized, 'label': int32}.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np


def to_unit_float(image: np.ndarray) -> np.ndarray:
  """uint8 0-255 or float [0, 1] -> float32 [0, 1]."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return image.astype(np.float32)


@dataclasses.dataclass
class Normalize(grain.transforms.Map):
  """(image - mean) / std per channel; the last step of every pipeline."""

  mean: Sequence[float]
  std: Sequence[float]

  def map(self, record: dict) -> dict:
    image = to_unit_float(np.asarray(record["image"]))
    image = (image - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    return {"image": image.astype(np.float32), "label": np.int32(record["label"])}
