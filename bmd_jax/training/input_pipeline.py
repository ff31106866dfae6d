"""Config -> data sources -> grain loaders of per-host batches.

Sources (config.dataset):
- 'digits': scikit-learn's digits, built in (data/digits.py);
- 'image_folder': config.data_dir/{train,val or test}/<class>/<images> (data/image_folder.py);
- 'tfds': the TFDS data set config.tfds_name, read from config.data_dir ('' = TFDS's default)
  through tfds.data_source (data/tfds_source.py);
- 'auto': the image folder when config.data_dir has a train/ folder, else TFDS;
- 'synthetic': random images and labels of the config's shape and class count, to run a
  recipe without its data (data/synthetic.py).
Every source yields {'image': HWC array, 'label': int}; images come out of the loaders as
float32 (image_size, image_size, channels), augmented as config.augment says (data/transforms.py)
and normalized by config.mean and config.std.

Each process (host) reads only its own shard of the data: grain's sampler is given the
process index and count, and produces batches of ``global_batch_size / process_count``
examples. train.py turns them into global arrays sharded over the mesh (sharding.py).

With config.input_path='device' (data/on_device.py) the splits are instead held in memory,
uploaded once to the devices, and every batch is shuffled, augmented and normalized inside
jit; that path imports neither grain nor TensorFlow (grain is imported only where used).

The train loader repeats forever and is deterministic for a seed; its iterator's state
(``get_state`` / ``set_state``) is saved with checkpoints, so a resumed run continues with
exactly the batch that would have come next. The eval loader is one pass in order, its last
batch padded to full size and marked by a ``mask`` field.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from etils import epath

from bmd_jax.training import sharding
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.data import digits, image_folder, in_memory, on_device, synthetic

AUGMENTATIONS = ("none", "cifar", "imagenet")
INPUT_PATHS = ("grain", "device")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int
  num_skipped: int = 0  # unreadable images left out (config.skip_unreadable_images)


@dataclasses.dataclass(frozen=True)
class Datasets:
  train: object  # grain random-access sources
  eval: object
  info: DatasetInfo


def _image_shape(config) -> tuple[int, int, int]:
  return (config.image_size, config.image_size, config.channels)


def _eval_resize_size(config) -> int:
  """ImageNet's evaluation resizes the shorter side to 256 for a 224 crop: keep that ratio."""
  return round(config.image_size * 256 / 224)


def _digits(config: ml_collections.ConfigDict) -> Datasets:
  train, test = digits.digits_sources(split_seed=config.get("split_seed", 0))
  info = DatasetInfo(digits.NUM_CLASSES, digits.IMAGE_SHAPE, len(train), len(test))
  return Datasets(train, test, info)


def _image_folder(config: ml_collections.ConfigDict) -> Datasets:
  skip = config.get("skip_unreadable_images", False)
  train, evaluation = image_folder.image_folder_sources(
      config.data_dir, channels=config.channels, skip_unreadable=skip,
      eval_min_side=(_eval_resize_size(config) if config.get("augment", "none") == "imagenet"
                     else None))
  skipped = train.skipped + evaluation.skipped
  if skipped:
    logging.warning("skipped %d unreadable images (config.skip_unreadable_images), e.g. %s: %s",
                    len(skipped), *skipped[0])
  info = DatasetInfo(len(train.classes), _image_shape(config), len(train), len(evaluation),
                     num_skipped=len(skipped))
  return Datasets(train, evaluation, info)


def _tfds(config: ml_collections.ConfigDict) -> Datasets:
  from bmd_jax.data import tfds_source  # imports tensorflow_datasets, slow: only when used

  train, evaluation, num_classes = tfds_source.tfds_sources(
      config.tfds_name, data_dir=config.data_dir, channels=config.channels)
  info = DatasetInfo(num_classes, _image_shape(config), len(train), len(evaluation))
  return Datasets(train, evaluation, info)


def _auto(config: ml_collections.ConfigDict) -> Datasets:
  # epath, so that a gs:// data_dir is looked into rather than taken for a missing local folder
  if config.data_dir and epath.Path(config.data_dir, "train").is_dir():
    return _image_folder(config)
  if config.data_dir and not epath.Path(config.data_dir).is_dir():
    raise FileNotFoundError(
        f"config.data_dir {config.data_dir} does not exist; name an image folder (with "
        f"train/<class>/*) or a TFDS data_dir holding {config.tfds_name}, or leave it empty for "
        "TFDS's default data_dir")
  return _tfds(config)


def _synthetic(config: ml_collections.ConfigDict) -> Datasets:
  num_classes = config.synthetic_classes
  if num_classes == 0:  # the class count of the recipe's data set: the recipe's model
    from bmd_jax.data import tfds_source
    num_classes = tfds_source.catalog_num_classes(config.tfds_name)
  train, evaluation = synthetic.synthetic_sources(
      _image_shape(config), num_classes, train_examples=config.synthetic_train_examples,
      eval_examples=config.synthetic_eval_examples, seed=config.seed)
  info = DatasetInfo(num_classes, _image_shape(config), len(train), len(evaluation))
  return Datasets(train, evaluation, info)


DATASETS = {"digits": _digits, "image_folder": _image_folder, "tfds": _tfds, "auto": _auto,
            "synthetic": _synthetic}


def _cached(datasets: Datasets) -> Datasets:
  """Both splits decoded once into memory (config.cache_decoded_images)."""
  return dataclasses.replace(datasets, train=in_memory.load_into_memory(datasets.train),
                             eval=in_memory.load_into_memory(datasets.eval))


def create_datasets(config: ml_collections.ConfigDict) -> Datasets:
  """The train and eval sources named by config.dataset, with their description."""
  name = config.dataset
  if name not in DATASETS:
    raise ConfigValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
  if config.get("augment", "none") not in AUGMENTATIONS:
    raise ConfigValueError(f"unknown augment {config.augment!r}; choose one of {AUGMENTATIONS}")
  channels = digits.IMAGE_SHAPE[-1] if name == "digits" else config.channels
  if channels not in (1, 3):
    raise ConfigValueError(f"config.channels must be 1 (greyscale) or 3 (RGB), got {channels}")
  for field in ("mean", "std"):
    if len(config[field]) not in (1, channels):
      raise ConfigValueError(f"config.{field} has {len(config[field])} values for images of "
                             f"{channels} channels; give {channels} (or 1)")
  input_path = config.get("input_path", "grain")
  if input_path not in INPUT_PATHS:
    raise ConfigValueError(f"unknown input_path {input_path!r}; choose one of {INPUT_PATHS}")
  if input_path == "device" and config.get("augment", "none") == "imagenet":
    raise ConfigValueError("config.input_path='device' does not do the ImageNet augmentation; "
                           "use config.input_path='grain'")
  datasets = DATASETS[name](config)
  # The device path needs the decoded arrays in memory to upload them.
  if (config.get("cache_decoded_images", False) or input_path == "device") and name != "digits":
    datasets = _cached(datasets)
  if input_path == "device":
    _check_device_path(config, datasets)
  return datasets


def _check_device_path(config, datasets: Datasets) -> None:
  shape = datasets.train.image_shape
  if tuple(shape[:2]) != (config.image_size, config.image_size):
    raise ConfigValueError(
        f"config.input_path='device' needs images of image_size={config.image_size}"
        f" square, but these are {shape}; use config.input_path='grain'")


def _fixed_size(config, source) -> list:
  """Resizes images that are not image_size square, unless the source's are known to be
  (a no-op map still costs grain ~25% of a cached CIFAR image's time)."""
  from bmd_jax.data import transforms  # grain: only on the grain path

  known = getattr(source, "image_shape", None)
  if known is not None and tuple(known[:2]) == (config.image_size, config.image_size):
    return []
  return [transforms.ResizeCenterCrop(config.image_size)]


def train_operations(config, source, batch_size: int) -> list:
  """The train loader's operations: augmentation (config.augment), batching, normalization."""
  import grain
  from bmd_jax.data import transforms

  augment = config.get("augment", "none")
  per_record = ([transforms.ImagenetAugment(config.image_size)] if augment == "imagenet"
                else _fixed_size(config, source))
  per_batch = [transforms.CifarAugment(config.image_size)] if augment == "cifar" else []
  return [*per_record, grain.transforms.Batch(batch_size, drop_remainder=True), *per_batch,
          transforms.Normalize(config.mean, config.std)]


def eval_operations(config, source, batch_size: int) -> list:
  """The eval loader's operations (ImageNet: resize the shorter side, center crop), batching
  (the last batch may be short) and normalization."""
  import grain
  from bmd_jax.data import transforms
  if config.get("augment", "none") == "imagenet":
    per_record = [transforms.ResizeCenterCrop(config.image_size, _eval_resize_size(config))]
  else:
    per_record = _fixed_size(config, source)
  return [*per_record, grain.transforms.Batch(batch_size, drop_remainder=False),
          transforms.Normalize(config.mean, config.std)]


def local_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
  process_count = process_count or jax.process_count()
  if global_batch_size % process_count:
    raise ConfigValueError(
        f"batch_size {global_batch_size} is not divisible by the {process_count} "
        "processes; choose a multiple of the process count")
  return global_batch_size // process_count


def _shard_options(drop_remainder: bool):
  import grain
  return grain.sharding.ShardOptions(
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      drop_remainder=drop_remainder)


def _worker_count(config) -> int:
  """config.num_workers; grain's worker processes read absl flags, so mark them parsed (with
  their defaults) when no absl app did it, e.g. in a notebook or a test."""
  workers = config.get("num_workers", 0)
  if workers > 0 and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return workers


def _read_options(source):
  """Threads that read (decode) records ahead of the operations, in each process.

  grain's default (16 threads, 500 records ahead) was the slowest setting measured on 2 cores
  (docs/BENCHMARKS.md): the threads contend for the GIL, and grain checks every buffered record
  on every read. Sources in memory need no read-ahead; decoding ones get 2 threads (Pillow
  decodes without holding the GIL, so they overlap with the operations and the train step).
  """
  import grain
  if isinstance(source, in_memory.ArraySource):
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return grain.ReadOptions(num_threads=2, prefetch_buffer_size=32)


def create_train_loader(config, source, seed: int):
  """An endless, shuffled, augmented loader of this host's batches (drop_remainder)."""
  import grain
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=_shard_options(True), shuffle=True,
      num_epochs=None, seed=seed)
  batch_size = local_batch_size(config.batch_size)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=train_operations(config, source, batch_size),
      worker_count=_worker_count(config), read_options=_read_options(source))


def eval_batches(config, source) -> Iterator[dict]:
  """One ordered pass over this host's eval shard; the last batch padded and masked.

  With worker processes each worker batches its own share of the shard, so each may end
  with a short (padded) batch: every example is still evaluated exactly once.
  """
  import grain

  batch_size = local_batch_size(config.get("eval_batch_size", config.batch_size))
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=_shard_options(False), shuffle=False,
      num_epochs=1, seed=0)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=eval_operations(config, source, batch_size),
      worker_count=_worker_count(config), read_options=_read_options(source))
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


# --- what the train loop reads: batches of global arrays, from either path -----------------

class GrainTrainInput:
  """This host's grain loader; its iterator (`checkpointable`) is saved with checkpoints."""

  def __init__(self, config, source, seed: int, mesh):
    self.checkpointable = iter(create_train_loader(config, source, seed))
    self.mesh = mesh

  def batch(self, step: int) -> dict:
    del step  # the iterator's own state says where it stands
    return sharding.global_batch(next(self.checkpointable), self.mesh)


def create_train_input(config, datasets: Datasets, mesh, seed: int):
  """The train batches of config.input_path: `.batch(step)` gives step's global batch;
  `.checkpointable` is the state to save with checkpoints (None: the step is enough)."""
  if config.get("input_path", "grain") == "grain":
    return GrainTrainInput(config, datasets.train, seed, mesh)
  return on_device.DeviceTrainInput(
      on_device.upload_source(datasets.train, mesh), mesh, seed=seed,
      batch_size=config.batch_size, augment=config.get("augment", "none"),
      mean=config.mean, std=config.std)


def global_eval_batches(config, datasets: Datasets, mesh) -> Iterator[dict]:
  """One pass over the eval split as global batches with a `mask` of the valid rows (the grain
  path; the device path evaluates the whole split in one program, evaluation.create_evaluator)."""
  for batch in sharding.equal_batch_count(eval_batches(config, datasets.eval)):
    yield sharding.global_batch(batch, mesh)
