"""TFDS data sets (any name and version: 'cifar10', 'imagenet2012', 'cifar10:3.0.2', ...).

Read through ``tfds.data_source`` from a prepared array_record copy: no TensorFlow at run time.
Preparing one needs TensorFlow once (TFDS's image encoders use it); a data set that is not
prepared raises ``DatasetNotPreparedError`` with the exact command that prepares it.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from PIL import Image

from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.data.image_folder import convert_channels

EVAL_SPLITS = ("validation", "test")  # the first present is the eval split
SYNTHETIC_HINT = ("To try the recipe without its data, add --config.dataset=synthetic "
                  "(random images and labels of its shape and class count).")


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS data set with no array_record copy in the data_dir."""


def _prepare_command(name: str, data_dir: str | None) -> str:
  """One shell line: the message may be printed as one line (bmd_jax/infra/cli.py)."""
  where = f", data_dir={data_dir!r}" if data_dir else ""
  return ("pip install tensorflow importlib_resources && "
          f"python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}{where})"
          ".download_and_prepare(file_format='array_record')\"")


def _not_prepared_message(name: str, data_dir: str | None, builder, error: Exception) -> str:
  """Why tfds.data_source failed, and the command that fixes it."""
  if builder.is_prepared():  # prepared, but as TFRecord files, which are not random access
    return (f"TFDS data set {name} is prepared at {builder.data_dir} as "
            f"{builder.info.file_format.value} files, but random access needs array_record. "
            f"Convert it: tfds convert_format --dataset_version_dir={builder.data_dir} "
            "--out_file_format=array_record, or prepare it again in another data_dir with: "
            + _prepare_command(name, data_dir))
  prepare = "Prepare it once"
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    if builder.name == "imagenet2012":
      what = ("the two files ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
              "https://image-net.org/download-images, after registering)")
    else:
      what = f"the files that its instructions name ({builder.MANUAL_DOWNLOAD_INSTRUCTIONS})"
    prepare = f"Put into {builder.data_dir_root}/downloads/manual/ {what}, then prepare it once"
  return (f"TFDS data set {name} is not prepared in {builder.data_dir_root}. {prepare} "
          f"(TensorFlow is needed for this step only): {_prepare_command(name, data_dir)}. "
          f"{SYNTHETIC_HINT} (TFDS: {type(error).__name__}: {str(error).splitlines()[0]})")


class _EmptyVariantFilter(logging.Filter):
  """Drops TFDS's warning about a version folder without dataset_info.json (one per lookup,
  three before a not-prepared error): the error says that the data set is not prepared."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tfds():
  absl_logger = logging.getLogger("absl")  # TFDS logs through absl.logging
  quiet = _EmptyVariantFilter()
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


@_quiet_tfds()
def _load(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # slow to import; only this source needs it

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(f"TFDS has no data set named {name!r} ({str(error).splitlines()[0]}); see "
                     "https://www.tensorflow.org/datasets/catalog for the names") from error
  except Exception as error:  # pylint: disable=broad-except  (diagnosed below)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as builder_error:  # pylint: disable=broad-except  (e.g. unknown version)
      raise ValueError(f"cannot load TFDS data set {name!r}: {builder_error}") from error
    if builder.is_prepared() and builder.info.splits and split not in builder.info.splits:
      raise ValueError(f"TFDS data set {name} has no split {split!r}; it has "
                       f"{sorted(builder.info.splits)}") from error
    raise DatasetNotPreparedError(_not_prepared_message(name, data_dir, builder, error)) from error


class TfdsSource:
  """A TFDS array_record source mapped to {'image': uint8 (H, W, channels), 'label': int32}."""

  def __init__(self, source, channels: int, name: str = ""):
    self.source = source
    self.channels = channels
    self.name = name
    height, width = source.dataset_info.features["image"].shape[:2]
    # Known when every image has one size (cifar10), None when they vary (imagenet2012).
    self.image_shape = (height, width, channels) if height and width else None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    record = self.source[int(index)]
    image = np.asarray(record["image"])
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] != self.channels:  # greyscale, RGBA, ... -> what the model expects
      pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
      image = np.asarray(convert_channels(pil, self.channels))
      image = image[..., None] if image.ndim == 2 else image
    return {"image": image, "label": np.int32(record["label"])}

  def __repr__(self) -> str:
    # grain checks a restored iterator state against this: no paths, so data can move.
    return f"TfdsSource({self.name!r}, {len(self)} records, channels={self.channels})"


def tfds_sources(name: str, *, data_dir: str | None = None, channels: int = 3):
  """(train, eval, num_classes): the 'train' split and 'validation' (or 'test')."""
  data_dir = data_dir or None  # '' means TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  train = _load(name, "train", data_dir)
  info = train.dataset_info
  missing = {"image", "label"} - set(info.features)
  if missing:
    raise ValueError(f"TFDS data set {name} has the features {sorted(info.features)}; "
                     f"bmd_jax needs 'image' and 'label' (missing: {sorted(missing)})")
  splits = set(info.splits) if info.splits else set()
  eval_split = next((s for s in EVAL_SPLITS if s in splits), "test")
  evaluation = _load(name, eval_split, data_dir)
  return (TfdsSource(train, channels, f"{info.full_name} train"),
          TfdsSource(evaluation, channels, f"{info.full_name} {eval_split}"),
          info.features["label"].num_classes)


def catalog_num_classes(name: str) -> int:
  """The class count of TFDS data set `name` as its catalog entry gives it: no data needed
  (imagenet2012: 1000)."""
  import tensorflow_datasets as tfds

  try:
    with _quiet_tfds():
      return int(tfds.builder(name).info.features["label"].num_classes)
  except Exception as error:  # pylint: disable=broad-except  (unknown name, no 'label', ...)
    raise ConfigValueError(f"cannot tell the class count of TFDS data set {name!r} "
                           f"({type(error).__name__}: {str(error).splitlines()[0]}) for "
                           "config.dataset='synthetic'; set config.synthetic_classes, e.g. "
                           "--config.synthetic_classes=10") from error
