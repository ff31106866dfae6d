"""bench/jpeg_pack.py: every packed file comes back byte-identical (JPEGs with their shared
header stored once, other files whole, old packs without a header table), the real CIFAR-10
files pack to under 0.45 of the old format, and a damaged pack is refused in one line before
anything is written."""

import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
CIFAR10_DIR = os.environ.get("BMD_CIFAR10_DIR",
                             os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg"))

import jpeg_pack  # noqa: E402


def legacy_pack(root, out, splits=("train", "test"), per_class=0):
  """The format before the header table (bench/jpeg_pack.py at a448dc6): whole files, no hash."""
  classes = sorted(os.listdir(os.path.join(root, splits[0])))
  chunks, split_ids, class_ids = [], [], []
  for s, split in enumerate(splits):
    for c, name in enumerate(classes):
      files = sorted(os.listdir(os.path.join(root, split, name)))
      for file in files[:per_class] if per_class else files:
        with open(os.path.join(root, split, name, file), "rb") as f:
          chunks.append(np.frombuffer(f.read(), np.uint8))
        split_ids.append(s)
        class_ids.append(c)
  offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
  np.savez(out, data=np.concatenate(chunks), offsets=offsets,
           split=np.asarray(split_ids, np.uint8), label=np.asarray(class_ids, np.uint8),
           splits=np.asarray(splits), classes=np.asarray(classes))


def originals(root, splits=("train", "test"), per_class=0):
  """The files in the order they are packed, as the paths unpack writes them to: {path: bytes}."""
  classes = sorted(os.listdir(os.path.join(root, splits[0])))
  ordered = []
  for split in splits:
    for name in classes:
      files = sorted(os.listdir(os.path.join(root, split, name)))
      for file in files[:per_class] if per_class else files:
        ordered.append((split, name, open(os.path.join(root, split, name, file), "rb").read()))
  return {os.path.join(split, name, f"{i:05d}.jpg"): data
          for i, (split, name, data) in enumerate(ordered)}


def written(root):
  return {os.path.relpath(os.path.join(folder, f), root): open(os.path.join(folder, f), "rb").read()
          for folder, _, files in os.walk(root) for f in files}


def jpeg(seed, quality):
  pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
  """Two classes a split: JPEGs at quality 50 and 90 (two headers), a PNG, a JPEG cut off before
  its scan, an empty file."""
  root = tmp_path / "images"
  for split, count in (("train", 3), ("test", 2)):
    for c, quality in ((0, 50), (1, 90)):
      os.makedirs(root / split / f"class{c}")
      for i in range(count):
        (root / split / f"class{c}" / f"{i}.jpg").write_bytes(jpeg(10 * c + i, quality))
  png = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
  (root / "train" / "class0" / "a.png").write_bytes(png.getvalue())
  (root / "train" / "class1" / "cut.jpg").write_bytes(jpeg(99, 75)[:100])
  (root / "test" / "class1" / "empty.jpg").write_bytes(b"")
  return root


def test_synthetic_files_round_trip_with_one_header_per_quality(folder, tmp_path):
  packed = tmp_path / "pack.npz"
  assert jpeg_pack.pack(str(folder), str(packed)) == 13
  with np.load(packed) as z:
    assert len(z["header_offsets"]) - 1 == 2  # quality 50 and 90; the others stored whole
    assert (z["header_index"] == -1).sum() == 3  # the PNG, the cut JPEG, the empty file
  assert jpeg_pack.unpack(str(packed), str(tmp_path / "out")) == 13
  assert written(tmp_path / "out") == originals(folder)


def test_per_class_and_splits_pick_the_same_files_as_before(folder, tmp_path):
  jpeg_pack.pack(str(folder), str(tmp_path / "pack.npz"), splits=("test",), per_class=1)
  jpeg_pack.unpack(str(tmp_path / "pack.npz"), str(tmp_path / "out"))
  assert written(tmp_path / "out") == originals(folder, ("test",), per_class=1)


def test_old_format_packs_still_unpack(folder, tmp_path):
  legacy_pack(str(folder), str(tmp_path / "old.npz"))
  assert jpeg_pack.unpack(str(tmp_path / "old.npz"), str(tmp_path / "out")) == 13
  assert written(tmp_path / "out") == originals(folder)


@pytest.mark.skipif(not os.path.isdir(CIFAR10_DIR), reason="no CIFAR-10 JPEG folder")
def test_real_cifar_files_round_trip_at_under_045_of_the_old_size(tmp_path):
  old, new = tmp_path / "old.npz", tmp_path / "new.npz"
  legacy_pack(CIFAR10_DIR, str(old), per_class=20)
  assert jpeg_pack.pack(CIFAR10_DIR, str(new), per_class=20) == 400
  jpeg_pack.unpack(str(new), str(tmp_path / "out"))
  assert written(tmp_path / "out") == originals(CIFAR10_DIR, per_class=20)
  ratio = os.path.getsize(new) / os.path.getsize(old)
  assert ratio < 0.45, ratio  # 623 of a file's ~884 B is the header every file shares


def _refusal(packed, target):
  result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "jpeg_pack.py"), "unpack",
                           str(packed), str(target)], capture_output=True, text=True, timeout=60)
  assert result.returncode == 1, result.stdout
  error = result.stderr.strip()
  assert len(error.splitlines()) == 1 and "Traceback" not in error, error
  assert error.startswith(f"jpeg_pack.py: {packed} is damaged"), error
  assert "pack it again" in error, error
  assert not os.path.exists(target)  # nothing written from wrong bytes
  return error


def test_a_flipped_byte_is_refused_in_one_line(folder, tmp_path):
  packed = tmp_path / "pack.npz"
  jpeg_pack.pack(str(folder), str(packed))
  raw = bytearray(packed.read_bytes())
  scan = (folder / "train" / "class0" / "1.jpg").read_bytes()[-40:-20]  # entropy-coded bytes
  at = raw.index(scan)
  raw[at] ^= 0x10
  packed.write_bytes(raw)
  _refusal(packed, tmp_path / "out")


def test_damage_the_zip_checksum_misses_is_refused_by_the_sha256(folder, tmp_path):
  """The bytes changed and the archive rewritten around them (its CRC-32 agrees): only the
  recorded sha256 of the original files tells."""
  packed = tmp_path / "pack.npz"
  jpeg_pack.pack(str(folder), str(packed))
  with np.load(packed) as z:
    arrays = dict(z)
  arrays["data"] = arrays["data"].copy()
  arrays["data"][len(arrays["data"]) // 2] ^= 0x01
  with open(packed, "wb") as f:
    np.savez(f, **arrays)
  assert zipfile.ZipFile(packed).testzip() is None
  assert "sha256" in _refusal(packed, tmp_path / "out")


def test_a_folder_without_jpegs_round_trips(tmp_path):
  root = tmp_path / "images"
  for split in ("train", "test"):
    os.makedirs(root / split / "only")
    (root / split / "only" / "a.txt").write_bytes(split.encode() * 3)
  jpeg_pack.pack(str(root), str(tmp_path / "pack.npz"))
  assert jpeg_pack.unpack(str(tmp_path / "pack.npz"), str(tmp_path / "out")) == 2
  assert written(tmp_path / "out") == originals(root)
