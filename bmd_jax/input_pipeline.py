"""Config -> data sources -> grain loaders of per-host batches.

Each process (host) reads only its own shard of the data: grain's sampler is given the
process index and count, and produces batches of ``global_batch_size / process_count``
examples. train.py turns them into global arrays sharded over the mesh (sharding.py).

The train loader repeats forever and is deterministic for a seed; its iterator's state
(``get_state`` / ``set_state``) is saved with checkpoints, so a resumed run continues with
exactly the batch that would have come next. The eval loader is one pass in order, its last
batch padded to full size and marked by a ``mask`` field.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np

from bmd_jax.data import digits, transforms


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int


@dataclasses.dataclass(frozen=True)
class Datasets:
  train: object  # grain random-access sources
  eval: object
  info: DatasetInfo


def _digits(config: ml_collections.ConfigDict) -> Datasets:
  train, test = digits.digits_sources(split_seed=config.get("split_seed", 0))
  info = DatasetInfo(digits.NUM_CLASSES, digits.IMAGE_SHAPE, len(train), len(test))
  return Datasets(train, test, info)


DATASETS = {"digits": _digits}


def create_datasets(config: ml_collections.ConfigDict) -> Datasets:
  """The train and eval sources named by config.dataset, with their description."""
  name = config.dataset
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
  return DATASETS[name](config)


def train_operations(config) -> list:
  return [transforms.Normalize(config.mean, config.std)]


def eval_operations(config) -> list:
  return [transforms.Normalize(config.mean, config.std)]


def local_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
  process_count = process_count or jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {process_count} "
                     "processes; choose a multiple of the process count")
  return global_batch_size // process_count


def _shard_options(drop_remainder: bool) -> grain.sharding.ShardOptions:
  return grain.sharding.ShardOptions(
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      drop_remainder=drop_remainder)


def create_train_loader(config, source, seed: int) -> grain.DataLoader:
  """An endless, shuffled, augmented loader of this host's batches (drop_remainder)."""
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=_shard_options(True), shuffle=True,
      num_epochs=None, seed=seed)
  batch = grain.transforms.Batch(local_batch_size(config.batch_size), drop_remainder=True)
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=[*train_operations(config), batch],
      worker_count=config.get("num_workers", 0))


def eval_batches(config, source) -> Iterator[dict]:
  """One ordered pass over this host's eval shard; the last batch padded and masked."""
  batch_size = local_batch_size(config.get("eval_batch_size", config.batch_size))
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=_shard_options(False), shuffle=False,
      num_epochs=1, seed=0)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[*eval_operations(config),
                  grain.transforms.Batch(batch_size, drop_remainder=False)],
      worker_count=config.get("num_workers", 0))
  for batch in loader:
    n = len(batch["label"])
    mask = np.zeros(batch_size, bool)
    mask[:n] = True
    pad = batch_size - n
    yield {
        "image": np.concatenate([batch["image"],
                                 np.zeros((pad, *batch["image"].shape[1:]), np.float32)]),
        "label": np.concatenate([batch["label"], np.zeros(pad, np.int32)]),
        "mask": mask,
    }
