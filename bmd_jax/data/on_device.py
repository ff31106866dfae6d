"""Data sets held on the accelerator: shuffled, augmented and normalized inside jit.

For data sets that fit in device memory (digits, CIFAR-10: 150 MB as uint8), each split is
uploaded once, split over the mesh's data axis, and every batch is made on the device: no
host work and no host-to-device copy per step, so the accelerator never waits for input
(airbench's approach). config.input_path='device' selects it (input_pipeline.py).

The batch of a step is a pure function of (seed, step): the epoch's order is a permutation
drawn from a key folded from (seed, epoch), and the augmentation's draws come from a key
folded from (seed, step). The checkpointed step alone therefore determines the next batch, so
there is no iterator state to save, and a resumed run continues exactly. Each epoch visits
num_examples // batch_size full batches of distinct examples; the remainder is dropped, as on
the grain path.

The CIFAR augmentation is the grain path's (transforms.CifarAugment, transforms.Normalize):
a crop of image_size at offsets uniform over 0..2*padding of the zero-padded image, a
horizontal flip with probability 1/2, then (x / 255 - mean) / std. Nothing here imports grain
or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"  # sharding.DATA_AXIS; the mesh's batch axis
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1  # independent key streams folded from the seed


@functools.partial(jax.tree_util.register_dataclass, data_fields=["images", "labels"],
                   meta_fields=["num_examples"])
@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """One split on the devices: rows padded to a multiple of `multiple` (never sampled)."""

  images: jax.Array  # (padded count, H, W, C), uint8 or float32, split over the data axis
  labels: jax.Array  # (padded count,) int32
  num_examples: int


def split_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def upload(images: np.ndarray, labels: np.ndarray, mesh: Mesh, multiple: int = 1) -> DeviceSplit:
  """Host arrays -> a DeviceSplit split over the data axis. Every process holds the whole
  split and passes only its devices' rows, so this works on several hosts as on one."""
  count = len(labels)
  multiple = np.lcm(multiple, mesh.devices.size)
  padded = -(-count // multiple) * multiple
  pad = padded - count
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([np.asarray(labels, np.int32), np.zeros(pad, np.int32)])
  sharding = split_sharding(mesh)
  put = lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
  return DeviceSplit(put(images), put(labels), count)


@functools.lru_cache(maxsize=4)
def upload_source(source, mesh: Mesh, multiple: int = 1) -> DeviceSplit:
  """An in-memory source (in_memory.ArraySource) uploaded once per mesh, whatever the number
  of stages that train on it."""
  return upload(np.asarray(source.images), np.asarray(source.labels), mesh, multiple)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """transforms.Normalize inside jit, in the same operation order (so equal values)."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) * np.float32(1 / 255)
  images = images.astype(jnp.float32) - np.asarray(mean, np.float32)
  return images * (1 / np.asarray(std, np.float32))


def crop_and_flip(images: jax.Array, top: jax.Array, left: jax.Array, flip: jax.Array,
                  padding: int) -> jax.Array:
  """Each image zero-padded by `padding`, cropped at (top, left) to its size, flipped where
  `flip`: one gather for the batch, as transforms.CifarAugment does it in numpy."""
  count, size = images.shape[0], images.shape[1]
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  steps = jnp.arange(size)
  rows = top[:, None] + steps
  cols = left[:, None] + jnp.where(flip[:, None], steps[::-1], steps)
  return padded[jnp.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]


def cifar_augment(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
  """The recipe's random crop (offsets uniform over 0..2*padding) and flip (probability 1/2)."""
  offset_key, flip_key = jax.random.split(key)
  top, left = jax.random.randint(offset_key, (2, images.shape[0]), 0, 2 * padding + 1)
  flip = jax.random.uniform(flip_key, (images.shape[0],)) < 0.5
  return crop_and_flip(images, top, left, flip, padding)


def epoch_order(seed: int, epoch, num_examples: int) -> jax.Array:
  """The permutation of the examples that epoch `epoch` visits."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _ORDER_STREAM), epoch)
  return jax.random.permutation(key, num_examples)


def batch_indices(seed: int, step, num_examples: int, batch_size: int) -> jax.Array:
  """The examples of train step `step`: its slice of its epoch's permutation."""
  steps_per_epoch = num_examples // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  order = epoch_order(seed, epoch, num_examples)
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def train_batch(split: DeviceSplit, step, *, seed: int, batch_size: int, augment: str,
                mean: Sequence[float], std: Sequence[float]) -> dict:
  """The global batch of train step `step` (traced): {'image': float32, 'label': int32}."""
  index = batch_indices(seed, step, split.num_examples, batch_size)
  images, labels = split.images[index], split.labels[index]
  if augment == "cifar":
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _AUGMENT_STREAM),
                             step)
    images = cifar_augment(key, images)
  return {"image": normalize(images, mean, std), "label": labels}


def eval_batch(split: DeviceSplit, index, *, batch_size: int, mean, std) -> dict:
  """Eval batch `index` (traced) in order; rows past the split's end are masked out."""
  start = index * batch_size
  images = jax.lax.dynamic_slice_in_dim(split.images, start, batch_size)
  labels = jax.lax.dynamic_slice_in_dim(split.labels, start, batch_size)
  mask = start + jnp.arange(batch_size) < split.num_examples
  return {"image": normalize(images, mean, std), "label": labels, "mask": mask}


class DeviceTrainInput:
  """Train batches made on the devices; the step is the whole of its state."""

  checkpointable = None  # nothing to save: the train state's step determines the next batch

  def __init__(self, split: DeviceSplit, mesh: Mesh, *, seed: int, batch_size: int,
               augment: str, mean, std):
    if augment not in ("none", "cifar"):
      raise ValueError(f"config.input_path='device' supports augment 'none' or 'cifar', not "
                       f"{augment!r}; use config.input_path='grain' for it")
    if split.num_examples < batch_size:
      raise ValueError(f"batch_size {batch_size} is larger than the {split.num_examples} "
                       "training examples; lower it")
    self.split = split
    # batch_fn(split, step): traced inside the train program (dispatch.device_steps), so a
    # step's batch costs no dispatch of its own.
    self.batch_fn = functools.partial(train_batch, seed=seed, batch_size=batch_size,
                                      augment=augment, mean=tuple(mean), std=tuple(std))
    self._batch = jax.jit(self.batch_fn, out_shardings=split_sharding(mesh))

  def batch(self, step: int) -> dict:
    return self._batch(self.split, np.int32(step))


def eval_sums(sums_fn, split: DeviceSplit, *, batch_size: int, num_batches: int, mean,
              std) -> dict:
  """The sum over eval batches 0 .. num_batches-1 (traced inside one program: the whole split
  in one dispatch) of `sums_fn(batch)`, a dict of scalars (e.g. evaluation.eval_step's)."""
  def body(index, totals):
    sums = sums_fn(eval_batch(split, index, batch_size=batch_size, mean=mean, std=std))
    return {k: totals[k] + v for k, v in sums.items()}

  first = sums_fn(eval_batch(split, 0, batch_size=batch_size, mean=mean, std=std))
  return jax.lax.fori_loop(1, num_batches, body, first)
