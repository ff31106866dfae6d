"""Image folders: ``<root>/<split>/<class>/<image>``, the layout of ImageNet's train/val folders.

Classes are the sub-folders of a split in sorted order (label = index), the same in every split.
Files are decoded with Pillow on access and converted to the channels the model expects
(1: greyscale, 3: RGB), whatever their mode: greyscale, palette, CMYK, RGBA, 16-bit PNG, float.
Every mode comes out as 8 bits, scaled so that the model sees the same values for the same
picture whatever its file: 16-bit levels / 257; float images (mode F, e.g. float32 TIFF) must
hold values in [0, 1], read as value * 255 (rounded), and are refused otherwise, naming the file
and the range found (no per-image min-max stretching: a pixel value would then mean something
different in each image). NaN or infinite pixels make an image unreadable.

Unreadable images. By default reading one raises ``UnreadableImageError`` naming the file. With
``skip_unreadable=True`` the source opens every file's header when it is created (Pillow reads
only the header: about 0.1 ms a file, 60k files in seconds, ImageNet's 1.28M in minutes) and
leaves out the files that fail, listing them in ``source.skipped``. A file whose header is sound
but whose data is not (a truncated JPEG) can only fail when decoded; it is then replaced by the
next readable record of the source (deterministically, so a resumed run sees the same data), and
a warning names it.

The root may be a URL (gs://bucket/imagenet): folders are listed and files read through
etils.epath. An object store has no links, so its folders are listed without the link checks.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import os

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from bmd_jax.infra import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                    ".webp")
EVAL_SPLITS = ("val", "test")  # the first present is the eval split
_SKIP_HINT = ("Replace or delete the file, or set config.skip_unreadable_images=True to skip "
              "unreadable images (they are counted and logged).")


class UnreadableImageError(OSError):
  """An image file that Pillow cannot decode, or whose pixels are not finite."""


class ImageFolderError(ValueError):
  """A data folder that cannot be read as <root>/<split>/<class>/<images>; the message names
  the folder or file and the fix."""


class ImageValueRangeError(ImageFolderError):
  """A float image whose values are not in [0, 1]. Never skipped: it is a convention that the
  folder's images likely share, not one damaged file."""


class NonFiniteImageError(ValueError):
  """A float image with NaN or infinite pixels (a damaged image: skip-or-fail per config)."""


def unit_float_to_8_bits(image: Image.Image) -> Image.Image:
  """A float image (mode F) of values in [0, 1] -> mode 'L' of round(value * 255): the levels
  of the same picture saved with 8 bits."""
  values = np.asarray(image, np.float32)
  bad = np.count_nonzero(~np.isfinite(values))
  if bad:
    raise NonFiniteImageError(f"{bad} of its {values.size} pixels are NaN or infinite")
  low, high = float(values.min()), float(values.max())
  if low < 0 or high > 1:
    raise ImageValueRangeError(
        f"it is a float image (mode F) with values in [{low:g}, {high:g}], but float images "
        "must hold values in [0, 1] (read as 0-255, as 8-bit images are). Rescale the images to "
        "[0, 1] with one factor for all, or save them as 8- or 16-bit images")
  return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L")


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
  """Any Pillow image -> mode 'L' (channels=1) or 'RGB' (channels=3)."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
  target = "L" if channels == 1 else "RGB"
  if image.mode == "F":  # Pillow's convert would clip the values to 0-255: [0, 1] -> 0 or 1
    image = unit_float_to_8_bits(image)
  if image.mode == target:
    return image
  if image.mode.startswith("I"):  # 16-bit greyscale PNG/TIFF: Pillow's convert would clip at 255
    levels = np.asarray(image, np.float32) / 257.0
    image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
  elif image.mode in ("P", "PA") and "transparency" in image.info:
    image = image.convert("RGBA")  # the direct conversion warns about the transparency
  return image.convert(target)


def load_image(path: str, channels: int, min_side: int | None = None) -> np.ndarray:
  """The image file at path as uint8 (H, W, channels).

  min_side: JPEGs are decoded at the largest reduced scale (1/2, 1/4, 1/8; Pillow's draft
  mode, much faster) whose shorter side is still at least min_side.
  """
  with _open_image(path) as image:
    if min_side and image.format == "JPEG":
      width, height = image.size
      scale = min_side / min(width, height)
      if scale <= 0.5:
        image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
    array = np.asarray(convert_channels(image, channels))
  return array[..., None] if array.ndim == 2 else array


def _open_image(path: str) -> Image.Image:
  if paths.is_url(path):  # Pillow opens local files; an object's bytes are read whole
    return Image.open(io.BytesIO(epath.Path(path).read_bytes()))
  return Image.open(path)


def _is_dir(path: str) -> bool:
  return epath.Path(path).is_dir()


def find_classes(split_dir: str) -> list[str]:
  return sorted(entry.name for entry in epath.Path(split_dir).iterdir()
                if not entry.name.startswith(".") and entry.is_dir())


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_class(class_dir: str) -> list[str]:
  """Image files under class_dir (recursively, sorted), relative to it.

  Linked folders are followed (data may live on another disk), but no folder is read twice:
  a link back into the class folder or above it (a loop: `ln -s . loop`, `ln -s .. up`), into
  another class's folder, or to a folder already read is skipped with a warning.
  """
  if paths.is_url(class_dir):
    return _list_objects(class_dir)
  real_class = os.path.realpath(class_dir)
  real_split = os.path.realpath(os.path.dirname(class_dir))
  seen, skipped, files = set(), [], []
  for folder, dirs, names in os.walk(class_dir, followlinks=True):
    seen.add(os.path.realpath(folder))
    kept = []
    for name in sorted(dirs):
      target = os.path.realpath(os.path.join(folder, name))
      problem = _linked_folder_problem(target, seen, real_class, real_split)
      if problem:
        skipped.append(f"{os.path.join(folder, name)} ({problem})")
      else:
        kept.append(name)
        seen.add(target)  # claimed now: a second link to it in this listing is a repeat
    dirs[:] = kept
    rel = os.path.relpath(folder, class_dir)
    files += [name if rel == "." else os.path.join(rel, name)
              for name in sorted(names) if _is_image(name)]
  if skipped:
    logging.warning("skipping %d linked folder(s) of %s that would read images twice or under "
                    "another label: %s", len(skipped), class_dir, "; ".join(skipped))
  return files


def _list_objects(class_dir: str) -> list[str]:
  """Image files under a URL folder (recursively, sorted), relative to it."""
  files, top = [], None
  for folder, _, names in epath.Path(class_dir).walk():
    # fsspec names the folders without their scheme: relative to the first one, the top.
    folder = os.fspath(folder).rstrip("/")
    top = folder if top is None else top
    rel = folder[len(top):].strip("/")
    files += [f"{rel}/{name}" if rel else name for name in names if _is_image(name)]
  return sorted(files)


def _linked_folder_problem(target: str, seen: set[str], real_class: str,
                           real_split: str) -> str | None:
  """Why a sub-folder (its real path `target`) must not be read for this class, or None."""
  def inside(path, parent):
    return path == parent or path.startswith(parent + os.sep)

  if target in seen or inside(real_class, target):
    return "a loop: it leads back to a folder already read"
  if inside(target, real_split) and not inside(target, real_class):
    return "it leads into another class's folder"
  return None


def _failure(path: str, error: Exception) -> str:
  """Why path could not be read, in words: Pillow's 'cannot identify image file' for an empty
  file does not say that it is empty."""
  try:
    if epath.Path(path).stat().length == 0:
      return "it is an empty file (0 bytes)"
  except OSError:
    pass
  return f"{type(error).__name__}: {error}"


def _header_problem(path: str) -> str | None:
  """Why Pillow cannot open path's header, or None."""
  try:
    with _open_image(path) as image:
      width, height = image.size
      if width == 0 or height == 0:
        return "empty image"
  except Exception as error:  # pylint: disable=broad-except  (anything Pillow raises)
    return _failure(path, error)
  return None


def _no_images_message(class_dir: str) -> str:
  others = sorted(entry.name for entry in epath.Path(class_dir).iterdir())
  more = f" and {len(others) - 3} more" if len(others) > 3 else ""
  holds = f"it holds {', '.join(others[:3])}{more}" if others else "it is empty"
  return (f"class folder {class_dir} has no image files ({holds}; image files end in "
          f"{', '.join(IMAGE_EXTENSIONS)}). Add images to it or remove it from every split")


class ImageFolderSource:
  """Random-access source of {'image': uint8 (H, W, channels), 'label': int32} (grain's protocol).

  Picklable and cheap to send to grain's worker processes: file names are kept in one numpy
  array of bytes, relative to the split's folder.
  """

  def __init__(self, root: str, split: str, *, channels: int = 3,
               skip_unreadable: bool = False, min_side: int | None = None,
               classes: list[str] | None = None):
    self.split_dir = os.path.join(root, split)
    if not _is_dir(self.split_dir):
      raise FileNotFoundError(f"image folder {self.split_dir} does not exist; expected "
                              f"{self.split_dir}/<class>/<image files>")
    self.classes = find_classes(self.split_dir) if classes is None else list(classes)
    if not self.classes:
      loose = sum(1 for entry in epath.Path(self.split_dir).iterdir() if _is_image(entry.name))
      hint = (f" It holds {loose} image files directly: move them into one sub-folder per "
              "class (ImageNet's val images come unsorted and need this)." if loose else "")
      raise ImageFolderError(f"image folder {self.split_dir} has no class folders; expected "
                             f"{self.split_dir}/<class>/<image files>.{hint}")
    files, labels = [], []
    for label, name in enumerate(self.classes):
      class_files = _list_class(os.path.join(self.split_dir, name))
      if not class_files:
        raise ImageFolderError(_no_images_message(os.path.join(self.split_dir, name)))
      files += [os.path.join(name, f) for f in class_files]
      labels += [label] * len(class_files)
    self.channels = channels
    self.min_side = min_side
    self.skip_unreadable = skip_unreadable
    self.skipped: list[tuple[str, str]] = []  # (path, reason) left out at creation
    self._files = np.array([os.fsencode(f) for f in files])
    self._labels = np.array(labels, np.int32)
    if skip_unreadable:
      self._drop_unreadable()

  def _drop_unreadable(self) -> None:
    paths = [self.path(i) for i in range(len(self._files))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      problems = list(pool.map(_header_problem, paths, chunksize=256))
    keep = np.array([p is None for p in problems], bool)
    self.skipped = [(path, p) for path, p in zip(paths, problems) if p is not None]
    self._files, self._labels = self._files[keep], self._labels[keep]
    if not len(self._files):
      raise ImageFolderError(f"no readable image in {self.split_dir} ({len(self.skipped)} "
                             f"skipped, e.g. {self.skipped[0][0]}: {self.skipped[0][1]})")

  def path(self, index: int) -> str:
    return os.path.join(self.split_dir, os.fsdecode(self._files[index]))

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    for attempt in range(len(self)):
      i = (index + attempt) % len(self)
      path = self.path(i)
      try:
        image = load_image(path, self.channels, self.min_side)
      except ImageValueRangeError as error:
        raise ImageValueRangeError(f"image {path}: {error}") from None
      except Exception as error:  # pylint: disable=broad-except  (anything Pillow raises)
        reason = _failure(path, error)
        if not self.skip_unreadable:
          raise UnreadableImageError(f"cannot read image {path}: {reason}. {_SKIP_HINT}") from error
        logging.warning("skipping unreadable image %s (%s); using the next record instead",
                        path, reason)
        continue
      return {"image": image, "label": self._labels[i]}
    raise UnreadableImageError(f"no image of {self.split_dir} could be decoded")

  def __repr__(self) -> str:
    # grain checks a restored iterator state against this: it names the data, not where the
    # folder is mounted, so a run can resume with its data moved.
    return (f"ImageFolderSource(split={os.path.basename(self.split_dir)!r}, {len(self)} images, "
            f"{len(self.classes)} classes, channels={self.channels})")


def image_folder_sources(root: str, *, channels: int = 3, skip_unreadable: bool = False,
                         eval_min_side: int | None = None):
  """(train, eval) sources of root/train and root/val (or root/test, when val is absent)."""
  if not root:
    raise ImageFolderError("no image folder given: set config.data_dir to a folder with "
                           "train/<class>/* and val/<class>/* (or test/<class>/*)")
  if not _is_dir(root):
    raise FileNotFoundError(f"image folder {root} does not exist; set config.data_dir to a "
                            "folder with train/<class>/* and val/<class>/* (or test/<class>/*)")
  if not _is_dir(os.path.join(root, "train")):
    raise FileNotFoundError(f"image folder {root} has no train/ folder; expected "
                            f"{root}/train/<class>/<image files>")
  eval_split = next((s for s in EVAL_SPLITS if _is_dir(os.path.join(root, s))), None)
  if eval_split is None:
    raise FileNotFoundError(f"image folder {root} has neither val/ nor test/; expected "
                            f"{root}/val/<class>/<image files> for evaluation")
  train_classes = find_classes(os.path.join(root, "train"))
  eval_classes = find_classes(os.path.join(root, eval_split))
  if train_classes and eval_classes and train_classes != eval_classes:
    only_train = sorted(set(train_classes) - set(eval_classes))
    only_eval = sorted(set(eval_classes) - set(train_classes))
    raise ImageFolderError(f"the class folders of {root}/train and {root}/{eval_split} differ: "
                           f"only in train: {only_train}; only in {eval_split}: {only_eval}. "
                           "Every split needs the same class folders")
  train = ImageFolderSource(root, "train", channels=channels, skip_unreadable=skip_unreadable)
  evaluation = ImageFolderSource(root, eval_split, channels=channels,
                                 skip_unreadable=skip_unreadable, min_side=eval_min_side,
                                 classes=train.classes)
  return train, evaluation
