"""Grain operations: the recipes' augmentation (docs/METHOD.md section 7) and normalization.

Per record (images of any size -> image_size square): resizing, ImageNet's augmentation.
Per batch, vectorized with numpy: the CIFAR augmentation, ``Normalize`` (-> float32 images).
Images stay uint8 until then: 4x less to batch and to send from worker processes.

- CIFAR (IR-Net): random crop of image_size from the image zero-padded by 4 pixels, horizontal
  flip with probability 1/2.
- ImageNet (ReActNet): random-resized crop (area 0.08 to 1 of the image, aspect ratio 3/4 to
  4/3, as torchvision's RandomResizedCrop), flip, AlexNet's PCA lighting noise (std 0.1);
  evaluation: shorter side resized to image_size * 256 / 224, then a center crop of image_size.

Random operations are ``grain.transforms.RandomMap``s: grain gives each record (and each
batch: its last record's) a generator seeded from the loader's seed and the record's position
in the sampler's order, so a seed fixes every batch, also after a restored iterator state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import grain
import numpy as np
from PIL import Image

# AlexNet's PCA of ImageNet RGB pixels (values in [0, 1]), as ReActNet's Lighting uses it.
LIGHTING_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
LIGHTING_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)


def to_unit_float(image: np.ndarray) -> np.ndarray:
  """uint8 0-255 or float [0, 1] -> float32 [0, 1]."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) * np.float32(1 / 255)
  return image.astype(np.float32)


def resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """The (left, top, right, bottom) box of a uint8 HWC image, resized (bilinear, antialiased)."""
  if image.dtype != np.uint8:
    raise ValueError(f"resizing needs uint8 images, got {image.dtype} of shape {image.shape}; "
                     "set config.image_size to the images' size")
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))
  return out[..., None] if out.ndim == 2 else out


def center_box(height: int, width: int, resize_size: int, crop_size: int):
  """The box of the original image that becomes the center crop of crop_size after the
  shorter side is resized to resize_size."""
  crop = crop_size * min(height, width) / resize_size
  left, top = (width - crop) / 2, (height - crop) / 2
  return (left, top, left + crop, top + crop)


@dataclasses.dataclass
class ResizeCenterCrop(grain.transforms.Map):
  """Shorter side to resize_size, then the center image_size square; a no-op on images that
  are already image_size square and need no resize."""

  image_size: int
  resize_size: int | None = None  # None: image_size (a center crop of the whole shorter side)

  def map(self, record: dict) -> dict:
    image = np.asarray(record["image"])
    height, width = image.shape[:2]
    resize_size = self.resize_size or self.image_size
    if height == width == self.image_size == resize_size:
      return record
    box = center_box(height, width, resize_size, self.image_size)
    return {"image": resize_box(image, box, self.image_size), "label": record["label"]}


@dataclasses.dataclass
class CifarAugment(grain.transforms.RandomMap):
  """Random crop of image_size from images zero-padded by `padding` pixels, random flip.

  Applied to a whole batch of image_size-square images at once (after grain's Batch): one
  numpy gather crops and flips every image, several times faster than a map per record.
  """

  image_size: int
  padding: int = 4

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    images = np.asarray(batch["image"])
    count, size, pad = len(images), self.image_size, self.padding
    if images.shape[1:3] != (size, size):
      raise ValueError(f"CifarAugment needs a batch of {size}x{size} images, got {images.shape}")
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top, left = rng.integers(0, 2 * pad + 1, size=(2, count))
    flip = rng.random(count) < 0.5
    steps = np.arange(size)
    rows = top[:, None] + steps
    cols = left[:, None] + np.where(flip[:, None], steps[::-1], steps)
    out = padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return {**batch, "image": out}


def random_resized_box(height: int, width: int, rng: np.random.Generator,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params, as a (left, top, right, bottom) box."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return (left, top, left + crop_w, top + crop_h)
  aspect = width / height  # fallback: the center crop with the closest allowed aspect ratio
  if aspect < min(ratio):
    crop_w, crop_h = width, int(round(width / min(ratio)))
  elif aspect > max(ratio):
    crop_w, crop_h = int(round(height * max(ratio))), height
  else:
    crop_w, crop_h = width, height
  top, left = (height - crop_h) // 2, (width - crop_w) // 2
  return (left, top, left + crop_w, top + crop_h)


def lighting_offset(rng: np.random.Generator, std: float) -> np.ndarray:
  """AlexNet's PCA lighting noise: one RGB offset (in [0, 1] units) for an image."""
  alpha = rng.normal(0.0, std, size=3).astype(np.float32)
  return LIGHTING_EIGVEC @ (alpha * LIGHTING_EIGVAL)


@dataclasses.dataclass
class ImagenetAugment(grain.transforms.RandomMap):
  """Random-resized crop to image_size, random flip, lighting noise; float32 in about [0, 1]."""

  image_size: int
  scale: tuple[float, float] = (0.08, 1.0)
  lighting_std: float = 0.1

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    image = np.asarray(record["image"])
    box = random_resized_box(*image.shape[:2], rng, scale=self.scale)
    image = resize_box(image, box, self.image_size)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    image = to_unit_float(image)
    if self.lighting_std:
      offset = lighting_offset(rng, self.lighting_std)
      image = image + (offset if image.shape[-1] == 3 else offset.mean())
    return {"image": image, "label": record["label"]}


@dataclasses.dataclass
class Normalize(grain.transforms.Map):
  """(image - mean) / std per channel, as float32; works on a record or a whole batch."""

  mean: Sequence[float]
  std: Sequence[float]

  def map(self, record: dict) -> dict:
    image = to_unit_float(np.asarray(record["image"]))
    image -= np.asarray(self.mean, np.float32)
    image *= 1 / np.asarray(self.std, np.float32)
    return {"image": image, "label": np.asarray(record["label"], np.int32)}
