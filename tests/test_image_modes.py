"""Image folders of float images (Pillow's mode F, e.g. float32 TIFF) and of damaged or
non-image files (issue 29): values in [0, 1] are read as an 8-bit image of the same picture
would be, anything else is refused naming the file."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bmd_jax.training import input_pipeline
from bmd_jax.data import image_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_folder(root, kind, count=200):
  """The first `count` of scikit-learn's digits as an image folder (each class's every 5th in
  val/): mode-F TIFFs of the values in [0, 1] ('tif'), or 8-bit PNGs of the same values ('png').
  Returns the folder and the values (N, 8, 8) in file order."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  values = (digits.images[:count] / 16.0).astype(np.float32)
  seen = np.zeros(10, int)
  for i, (value, label) in enumerate(zip(values, digits.target[:count])):
    seen[label] += 1
    folder = os.path.join(root, "val" if seen[label] % 5 == 0 else "train", str(label))
    os.makedirs(folder, exist_ok=True)
    if kind == "tif":
      Image.fromarray(value, "F").save(os.path.join(folder, f"{i:04d}.tif"))
    else:
      pixels = np.rint(value * 255).astype(np.uint8)
      Image.fromarray(pixels, "L").save(os.path.join(folder, f"{i:04d}.png"))
  return str(root), values


def digits_folder_config(data_dir):
  """configs/default.py with the issue's overrides: --config.dataset=image_folder
  --config.channels=1 --config.image_size=8 --config.data_dir=..."""
  from bmd_jax.configs import default

  config = default.get_config()
  config.dataset, config.data_dir = "image_folder", data_dir
  config.channels, config.image_size = 1, 8
  return config


def write_float_image(path, values):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(values, np.float32), "F").save(path)
  assert Image.open(path).mode == "F"
  return str(path)


def test_float_tiff_digits_decode_as_the_same_images_as_png(tmp_path):
  tif_dir, values = digits_folder(tmp_path / "tif", "tif")
  png_dir, _ = digits_folder(tmp_path / "png", "png")
  tif = input_pipeline.create_datasets(digits_folder_config(tif_dir))
  png = input_pipeline.create_datasets(digits_folder_config(png_dir))
  for tif_split, png_split in ((tif.train, png.train), (tif.eval, png.eval)):
    assert len(tif_split) == len(png_split) > 0
    for i in range(len(tif_split)):
      index = int(os.path.basename(tif_split.path(i)).split(".")[0])
      want = np.rint(values[index] * 255).astype(np.uint8)[..., None]  # as 8-bit images are
      np.testing.assert_array_equal(tif_split[i]["image"], want)
      np.testing.assert_array_equal(tif_split[i]["image"], png_split[i]["image"])
      assert tif_split[i]["label"] == png_split[i]["label"]
  # What the model sees: the normalized eval batches are the same arrays.
  config = digits_folder_config(tif_dir)
  for a, b in zip(input_pipeline.eval_batches(config, tif.eval),
                  input_pipeline.eval_batches(config, png.eval)):
    np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.parametrize("channels", [1, 3])
def test_float_image_in_unit_range_is_scaled_to_8_bits(tmp_path, channels):
  values = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
  path = write_float_image(tmp_path / "ramp.tif", values)
  image = image_folder.load_image(path, channels)
  assert image.dtype == np.uint8 and image.shape == (5, 6, channels)
  want = np.rint(values * 255).astype(np.uint8)
  for c in range(channels):
    np.testing.assert_array_equal(image[..., c], want)


@pytest.mark.parametrize("low, high", [(0.0, 255.0), (-1.0, 1.0), (0.0, 1.5)])
def test_float_image_outside_unit_range_is_refused_naming_file_mode_and_range(
    tmp_path, low, high):
  values = np.linspace(low, high, 30, dtype=np.float32).reshape(5, 6)
  path = write_float_image(tmp_path / "train" / "a" / "x.tif", values)
  write_float_image(tmp_path / "val" / "a" / "y.tif", np.zeros((5, 6)))
  for skip in (False, True):  # a convention, not a damaged file: never skipped
    train, _ = image_folder.image_folder_sources(str(tmp_path), channels=1,
                                                 skip_unreadable=skip)
    with pytest.raises(image_folder.ImageValueRangeError) as info:
      train[0]
    message = str(info.value)
    assert path in message and "mode F" in message, message
    assert f"[{low:g}, {high:g}]" in message and "[0, 1]" in message, message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_naming_the_file(tmp_path, bad):
  values = np.full((5, 6), 0.5, np.float32)
  values[2, 3] = bad
  path = write_float_image(tmp_path / "train" / "a" / "0.tif", values)
  good = write_float_image(tmp_path / "train" / "a" / "1.tif", np.full((5, 6), 0.25))
  write_float_image(tmp_path / "val" / "a" / "0.tif", np.zeros((5, 6)))
  train, _ = image_folder.image_folder_sources(str(tmp_path), channels=1)
  with pytest.raises(image_folder.UnreadableImageError) as info:
    train[0]
  assert path in str(info.value) and "NaN or infinite" in str(info.value)
  # With config.skip_unreadable_images it is a damaged image like any other: replaced.
  train, _ = image_folder.image_folder_sources(str(tmp_path), channels=1,
                                               skip_unreadable=True)
  assert train.path(1) == good
  np.testing.assert_array_equal(train[0]["image"], train[1]["image"])


# --- through the command line, where a user meets them -----------------------------------------

def run_main(workdir, data_dir, *overrides):
  command = [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
             f"--workdir={workdir}", "--config.dataset=image_folder",
             f"--config.data_dir={data_dir}", "--config.channels=1", "--config.image_size=8",
             "--config.num_train_steps=2", "--config.batch_size=8",
             "--config.eval_batch_size=8", *overrides]
  return subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                        capture_output=True, text=True, timeout=300)


def small_float_folder(root):
  for split in ("train", "val"):
    for label in ("a", "b"):
      for i in range(4):
        write_float_image(os.path.join(root, split, label, f"{i}.tif"),
                          np.full((8, 8), 0.1 * (i + 1)))
  return str(root)


def assert_one_line_error(result, *words):
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  for word in words:
    assert word in result.stderr, (word, result.stderr[-3000:])


@pytest.mark.slow
def test_command_line_refuses_a_nan_pixel_in_one_line(tmp_path):
  root = small_float_folder(tmp_path / "data")
  values = np.full((8, 8), 0.5, np.float32)
  values[0, 0] = np.nan
  bad = write_float_image(os.path.join(root, "train", "b", "2.tif"), values)
  result = run_main(tmp_path / "run", root)
  assert_one_line_error(result, bad, "NaN or infinite", "skip_unreadable_images")


@pytest.mark.slow
def test_command_line_names_a_class_folder_without_images(tmp_path):
  root = small_float_folder(tmp_path / "data")
  for split in ("train", "val"):
    os.makedirs(os.path.join(root, split, "notes"))
    with open(os.path.join(root, split, "notes", "readme.txt"), "w") as f:
      f.write("not an image")
  result = run_main(tmp_path / "run", root)
  assert_one_line_error(result, os.path.join(root, "train", "notes"), "readme.txt",
                        "has no image files")


@pytest.mark.slow
def test_command_line_names_a_zero_byte_png_and_skips_it_when_asked(tmp_path):
  root = small_float_folder(tmp_path / "data")
  empty = os.path.join(root, "train", "a", "empty.png")
  open(empty, "wb").close()
  result = run_main(tmp_path / "run", root)
  assert_one_line_error(result, empty, "empty file (0 bytes)", "skip_unreadable_images")
  result = run_main(tmp_path / "run2", root, "--config.skip_unreadable_images=True")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "skipped 1 unreadable image" in result.stderr and empty in result.stderr
