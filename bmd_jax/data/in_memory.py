"""Sources held in memory: arrays of images and labels, and a loader of any source into them.

Decoding a small JPEG costs about 0.25 ms in Pillow, most of it Python-level header parsing:
far more than cropping and flipping it. For a data set that fits in memory (CIFAR-10's 60k
32x32 images are 180 MB) decoding once at start-up (config.cache_decoded_images) takes that
cost out of every epoch.
"""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
from absl import logging


class ArraySource:
  """A random-access source over in-memory images and labels (grain's RandomAccessDataSource)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, name: str | None = None):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = images
    self.labels = labels
    self.name = name  # the repr of the source it was loaded from, if any

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.images.shape[1:]

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": int(self.labels[index])}

  def __repr__(self) -> str:
    # grain checks a restored iterator state against this (the default repr, with an object
    # address, would never match): a loaded source keeps its origin's, so a run can resume
    # with config.cache_decoded_images switched.
    if self.name:
      return self.name
    return f"ArraySource({len(self)} images of {self.images.shape[1:]} {self.images.dtype})"


def load_into_memory(source, num_threads: int = 4) -> ArraySource:
  """Every record of source, decoded once into one array; the images must share one shape."""
  start = time.time()
  first = source[0]["image"]
  images = np.empty((len(source), *first.shape), first.dtype)
  labels = np.empty(len(source), np.int32)

  def load(index: int) -> None:
    record = source[index]
    image = np.asarray(record["image"])
    if image.shape != first.shape:
      where = getattr(source, "path", lambda i: f"record {i}")(index)
      raise ValueError(f"caching decoded images needs images of one shape, but {where} is "
                       f"{image.shape} and the first is {first.shape}; set "
                       "config.cache_decoded_images=False")
    images[index] = image
    labels[index] = record["label"]

  # Pillow releases the GIL while it decodes, so a few threads overlap decoding.
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for _ in pool.map(load, range(len(source)), chunksize=1024):
      pass
  logging.info("decoded %d images of %s into memory (%.0f MB) in %.1f s", len(source),
               first.shape, images.nbytes / 2**20, time.time() - start)
  return ArraySource(images, labels, name=repr(source))
