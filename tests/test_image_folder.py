"""Tests of bmd_jax.data.image_folder on small folders that the tests write: layout errors,
unreadable files (fail or skip), and every image mode converted to the channels asked for."""

import os

import numpy as np
import pytest
from PIL import Image

from bmd_jax.data import image_folder
from bmd_jax.data.image_folder import UnreadableImageError


def write_image(path, mode="RGB", size=(6, 5), color=None, fmt=None, **save_kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if color is None:
    color = {"L": 100, "RGB": (200, 30, 60), "RGBA": (200, 30, 60, 128),
             "CMYK": (0, 255, 255, 0), "LA": (100, 255), "I;16": 25700, "1": 1}[mode]
  Image.new(mode, size, color).save(path, fmt, **save_kwargs)
  return path


def make_folder(root, splits=("train", "val"), classes=("cat", "dog"), per_class=2, ext="png"):
  for split in splits:
    for name in classes:
      for i in range(per_class):
        write_image(os.path.join(root, split, name, f"{i}.{ext}"))
  return str(root)


# --- layout ------------------------------------------------------------------------------------

def test_classes_sorted_labels_and_eval_split(tmp_path):
  root = make_folder(tmp_path, splits=("train", "val", "test"), classes=("zebra", "ant", "cat"))
  os.makedirs(tmp_path / "train" / ".hidden")  # not a class
  train, evaluation = image_folder.image_folder_sources(root)
  assert train.classes == ["ant", "cat", "zebra"]
  assert evaluation.split_dir.endswith("val")  # val is preferred to test
  assert len(train) == len(evaluation) == 6
  for i in range(len(train)):
    assert os.path.basename(os.path.dirname(train.path(i))) == train.classes[train[i]["label"]]
  np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])


def test_test_split_when_no_val_and_nested_files(tmp_path):
  root = make_folder(tmp_path, splits=("train", "test"))
  write_image(str(tmp_path / "train" / "cat" / "sub" / "deep.jpg"))
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  train, evaluation = image_folder.image_folder_sources(root)
  assert evaluation.split_dir.endswith("test")
  assert len(train) == 5 and train.path(2).endswith(os.path.join("cat", "sub", "deep.jpg"))


@pytest.mark.parametrize("case, error, words", [
    ("no_root", FileNotFoundError, ["does not exist", "config.data_dir"]),
    ("no_train", FileNotFoundError, ["no train/ folder"]),
    ("no_eval", FileNotFoundError, ["neither val/ nor test/"]),
    ("empty_train", ValueError, ["has no class folders"]),
    ("loose_files", ValueError, ["has no class folders", "3 image files directly", "sub-folder"]),
    ("empty_class", ValueError, ["class folder", "dog", "has no image files"]),
    ("mismatch", ValueError, ["differ", "only in train: ['dog']", "only in val: ['bird']"]),
])
def test_layout_errors_name_the_problem(tmp_path, case, error, words):
  root = tmp_path / "data"
  if case != "no_root":
    make_folder(root, classes=("cat",))
  if case == "no_train":
    os.rename(root / "train", root / "elsewhere")
  elif case == "no_eval":
    os.rename(root / "val", root / "elsewhere")
  elif case in ("empty_train", "loose_files"):
    for name in os.listdir(root / "train" / "cat"):
      os.remove(root / "train" / "cat" / name)
    os.rmdir(root / "train" / "cat")
    if case == "loose_files":
      for i in range(3):
        write_image(str(root / "train" / f"{i}.jpg"))
  elif case == "empty_class":
    os.makedirs(root / "train" / "dog")
    os.makedirs(root / "val" / "dog")
  elif case == "mismatch":
    make_folder(root, splits=("train",), classes=("dog",))
    make_folder(root, splits=("val",), classes=("bird",))
  with pytest.raises(error) as info:
    image_folder.image_folder_sources(str(root))
  for word in words:
    assert word in str(info.value)
  if case not in ("mismatch",):
    assert str(root) in str(info.value)


def test_empty_data_dir_is_an_error():
  with pytest.raises(ValueError, match="config.data_dir"):
    image_folder.image_folder_sources("")


# --- unreadable images -------------------------------------------------------------------------

def _folder_with_bad_files(tmp_path):
  root = make_folder(tmp_path, ext="jpg", per_class=3)
  garbage = tmp_path / "train" / "cat" / "1.jpg"
  garbage.write_bytes(b"this is not a JPEG")
  truncated = tmp_path / "train" / "dog" / "1.jpg"
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:2000])  # a sound header, data cut short
  return root, str(garbage), str(truncated)


def test_unreadable_image_raises_naming_the_file(tmp_path):
  root, garbage, truncated = _folder_with_bad_files(tmp_path)
  train, _ = image_folder.image_folder_sources(root)
  assert len(train) == 6
  paths = [train.path(i) for i in range(len(train))]
  for bad in (garbage, truncated):
    with pytest.raises(UnreadableImageError) as info:
      train[paths.index(bad)]
    assert bad in str(info.value) and "skip_unreadable_images" in str(info.value)


def test_skip_unreadable_counts_and_substitutes(tmp_path):
  root, garbage, truncated = _folder_with_bad_files(tmp_path)
  train, evaluation = image_folder.image_folder_sources(root, skip_unreadable=True)
  # The header scan leaves out the garbage file and lists it; the truncated one passes it.
  assert [path for path, _ in train.skipped] == [garbage]
  assert evaluation.skipped == []
  assert len(train) == 5
  paths = [train.path(i) for i in range(len(train))]
  assert garbage not in paths
  # Decoding the truncated file fails: the next record (the same one every time) stands in.
  i = paths.index(truncated)
  record = train[i]
  np.testing.assert_array_equal(record["image"], train[(i + 1) % len(train)]["image"])
  assert record["label"] == train[(i + 1) % len(train)]["label"]


def test_skip_with_nothing_readable_is_an_error(tmp_path):
  root = make_folder(tmp_path, classes=("cat",), per_class=1)
  (tmp_path / "train" / "cat" / "0.png").write_bytes(b"")
  with pytest.raises(ValueError, match="no readable image"):
    image_folder.image_folder_sources(root, skip_unreadable=True)


# --- image modes -------------------------------------------------------------------------------

RED_ISH = (200, 30, 60)
GREY = 100
MODES = [
    # (file, mode, save format, expected RGB, tolerance); JPEG is lossy
    ("grey.png", "L", None, (GREY,) * 3, 0),
    ("grey.jpg", "L", None, (GREY,) * 3, 2),
    ("rgb.jpg", "RGB", None, RED_ISH, 4),
    ("rgb.png", "RGB", None, RED_ISH, 0),
    ("rgba.png", "RGBA", None, RED_ISH, 0),
    ("cmyk.jpg", "CMYK", None, (255, 0, 0), 4),
    ("la.png", "LA", None, (GREY,) * 3, 0),
    ("grey16.png", "I;16", None, (GREY,) * 3, 0),  # 25700 / 257 = 100, not clipped to 255
    ("bilevel.png", "1", None, (255,) * 3, 0),
    ("photo.JPEG", "RGB", "JPEG", RED_ISH, 4),  # ImageNet's upper-case extension
    ("photo.bmp", "RGB", None, RED_ISH, 0),
]


def _palette_images(folder):
  rgb = Image.new("RGB", (6, 5), RED_ISH)
  rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(os.path.join(folder, "palette.png"))
  rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(os.path.join(folder, "palette.gif"))
  transparent = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
  transparent.info["transparency"] = 0
  transparent.save(os.path.join(folder, "palette_transparent.png"), transparency=0)
  return ["palette.png", "palette.gif", "palette_transparent.png"]


@pytest.mark.parametrize("channels", [3, 1])
def test_every_mode_converted_to_the_channels(tmp_path, channels):
  folder = tmp_path / "modes"
  for name, mode, fmt, _, _ in MODES:
    write_image(str(folder / name), mode, fmt=fmt)
  assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
  assert Image.open(folder / "grey16.png").mode.startswith("I")
  palettes = _palette_images(str(folder))
  assert all(Image.open(folder / p).mode == "P" for p in palettes)
  expected = {name: (rgb, tol) for name, _, _, rgb, tol in MODES}
  expected.update({p: (RED_ISH, 0) for p in palettes})
  for name, (rgb, tol) in expected.items():
    image = image_folder.load_image(str(folder / name), channels)
    assert image.dtype == np.uint8 and image.shape == (5, 6, channels), name
    if channels == 3:
      want = np.array(rgb)
    else:  # ITU-R 601-2 luma, as Pillow computes it
      want = np.array([round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])])
    np.testing.assert_allclose(image[2, 3].astype(int), want, atol=tol + (channels == 1),
                               err_msg=name)


def test_source_converts_modes_in_a_folder(tmp_path):
  for split in ("train", "val"):
    write_image(str(tmp_path / split / "a" / "cmyk.jpg"), "CMYK")
    write_image(str(tmp_path / split / "b" / "rgba.png"), "RGBA")
    write_image(str(tmp_path / split / "c" / "grey.png"), "L")
  train, _ = image_folder.image_folder_sources(str(tmp_path), channels=3)
  assert {train[i]["image"].shape for i in range(3)} == {(5, 6, 3)}
  train, _ = image_folder.image_folder_sources(str(tmp_path), channels=1)
  assert {train[i]["image"].shape for i in range(3)} == {(5, 6, 1)}


def test_bad_channels_rejected(tmp_path):
  path = write_image(str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="channels must be 1"):
    image_folder.load_image(path, 4)


def test_draft_decodes_large_jpegs_smaller_but_not_below_min_side(tmp_path):
  path = write_image(str(tmp_path / "big.jpg"), size=(1000, 800))
  assert image_folder.load_image(path, 3).shape == (800, 1000, 3)
  small = image_folder.load_image(path, 3, min_side=300)
  assert small.shape == (400, 500, 3)  # 1/2 scale: 1/4 would make the shorter side 200 < 300


def test_source_pickles_compactly(tmp_path):
  import pickle

  root = make_folder(tmp_path, per_class=50)
  train, _ = image_folder.image_folder_sources(root)
  clone = pickle.loads(pickle.dumps(train))
  assert len(clone) == 100 and clone.path(7) == train.path(7)
  np.testing.assert_array_equal(clone[7]["image"], train[7]["image"])
