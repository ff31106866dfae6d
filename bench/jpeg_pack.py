"""An image folder's files packed into one .npz, and unpacked again byte for byte.

The GPU machine receives at most 64 MiB in all (docs: issue 14). CIFAR-10's 60,000 JPEGs are
55.25 MB of file bytes, but a tar of them is ~90 MB (512-byte headers and padding per file) and
the decoded arrays 184 MB. Every one of them starts with the same 623-byte header (SOI up to and
including the SOS segment: the quantization and Huffman tables; all 60,000 checked, and all end
in EOI), 70% of the bytes. So a pack holds each distinct header once, and per file the index of
its header and the rest of its bytes (the entropy-coded scan and EOI); a file that is not a
JPEG with an SOS segment is stored whole (index -1), so any image folder round-trips. With the
files' split and class and a sha256 over all the original bytes in pack order, which unpack
checks before it writes anything: a damaged pack is refused in one line, it never trains on
wrong bytes. Unpacking writes the <split>/<class>/<index>.jpg tree for the image_folder source.
Packs of the old format (whole files, no header table, no hash; before 2026-12-06) still unpack,
checked only by the zip's CRC-32s, as before.

    python bench/jpeg_pack.py pack /work/shared/data/cifar10-jpeg bench/gpu_payload/cifar10.npz
    python bench/jpeg_pack.py unpack bench/gpu_payload/cifar10.npz /tmp/cifar10-jpeg

Measured 2026-12-06 on the 2-core CPU at load 0.5-3.9 (uptime), the files in the page cache;
old = this file at a448dc6 (`git show a448dc6:bench/jpeg_pack.py`), sizes from pack(root, out,
splits=...) of each, times of `python3 bench/jpeg_pack.py pack|unpack ...` on both splits:
  train  50,000 files 46,041,251 B: old pack 46,543,161 B, new 15,245,298 B (0.328)
  test   10,000 files  9,209,662 B: old pack  9,311,568 B, new  3,053,705 B (0.328)
  both   60,000 files 55,250,913 B: old pack 55,852,843 B, new 18,294,980 B (0.328)
  pack: old 1.2-2.3 s, new 1.2-2.0 s (3 runs each). unpack: np.load and _files (the rebuild,
  and in the new format the sha256 check) timed in-process 0.12-0.14 s old, 0.16-0.25 s new;
  the whole command 13-28 s old, 6-30 s new (3 runs each): writing 60,000 files on this shared
  disk is all that shows.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile

import numpy as np

FORMAT = 2  # 1: whole files, no "format" entry (the old packs); 2: a header table and sha256
FIX = "pack it again (bench/prepare_gpu_run.sh, or jpeg_pack.py pack) and carry the new one"


class PackError(ValueError):
  """A pack that cannot be unpacked to its original bytes."""


def header_length(data: bytes) -> int:
  """The bytes of a JPEG up to and including its SOS segment, or 0 when there is none."""
  if data[:2] != b"\xff\xd8":
    return 0
  i = 2
  while i + 4 <= len(data):
    if data[i] != 0xFF:
      return 0
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte before a marker
      i += 1
    elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
      i += 2
    else:
      end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
      if marker == 0xDA:
        return end if end <= len(data) else 0
      i = end
  return 0


def pack(root: str, out: str, splits=("train", "test"), per_class: int = 0) -> int:
  """Packs root/<split>/<class>/* (the first `per_class` files of each class if > 0) into `out`
  (exactly that path, written whole then renamed); returns the number of files."""
  classes = sorted(os.listdir(os.path.join(root, splits[0])))
  headers, rests, header_ids, split_ids, class_ids = {}, [], [], [], []
  digest = hashlib.sha256()
  for s, split in enumerate(splits):
    for c, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      files = sorted(os.listdir(folder))
      for file in files[:per_class] if per_class else files:
        with open(os.path.join(folder, file), "rb") as f:
          data = f.read()
        digest.update(data)
        cut = header_length(data)
        header_ids.append(headers.setdefault(data[:cut], len(headers)) if cut else -1)
        rests.append(data[cut:])
        split_ids.append(s)
        class_ids.append(c)
  table = list(headers)  # in index order: dicts keep insertion order

  def offsets(chunks):  # the smallest unsigned type that holds the total
    ends = np.cumsum([0] + [len(c) for c in chunks], dtype=np.int64)
    return ends.astype(np.min_scalar_type(ends[-1]))

  def concat(chunks):
    return np.frombuffer(b"".join(chunks), np.uint8)

  small = np.min_scalar_type(max(len(splits), len(classes)))
  arrays = dict(
      format=np.asarray(FORMAT), sha256=np.asarray(digest.hexdigest()),
      headers=concat(table), header_offsets=offsets(table),
      # A signed type that holds -1 and every index.
      header_index=np.asarray(header_ids, np.min_scalar_type(-len(table) - 1)),
      data=concat(rests), offsets=offsets(rests), split=np.asarray(split_ids, small),
      label=np.asarray(class_ids, small), splits=np.asarray(splits), classes=np.asarray(classes))
  part = out + ".part"
  with open(part, "wb") as f:  # a file object: np.savez would append .npz to a path
    np.savez(f, **arrays)
  os.replace(part, out)
  return len(rests)


def _files(z, packed: str) -> list[bytes]:
  """The packed files' original bytes, in pack order."""
  data, ends = z["data"].tobytes(), z["offsets"].tolist()
  if "format" not in z:  # the old format: whole files
    return [data[a:b] for a, b in zip(ends, ends[1:])]
  if int(z["format"]) != FORMAT:
    raise PackError(f"{packed} is in format {int(z['format'])}, this jpeg_pack.py reads 1 and "
                    f"{FORMAT}: unpack it with the jpeg_pack.py that packed it, or {FIX}")
  table, cuts = z["headers"].tobytes(), z["header_offsets"].tolist()
  headers = [table[a:b] for a, b in zip(cuts, cuts[1:])] + [b""]  # [-1]: stored whole
  files = [headers[h] + data[a:b]
           for h, a, b in zip(z["header_index"].tolist(), ends, ends[1:])]
  got, want = hashlib.sha256(b"".join(files)).hexdigest(), str(z["sha256"])
  if got != want:
    raise PackError(f"{packed} is damaged: its files' sha256 is {got[:16]}..., they were packed "
                    f"with {want[:16]}...: {FIX}")
  return files


def unpack(packed: str, root: str) -> int:
  """Writes the packed files as root/<split>/<class>/<index>.jpg; returns their count. Raises
  PackError (one line, naming the pack and the fix) before writing anything when the pack is
  damaged."""
  try:
    with np.load(packed) as z:
      files = _files(z, packed)
      split, label = z["split"].tolist(), z["label"].tolist()
      splits, classes = [str(s) for s in z["splits"]], [str(c) for c in z["classes"]]
  except PackError:
    raise
  except FileNotFoundError as e:
    raise PackError(f"no pack at {packed}: pack one with jpeg_pack.py pack") from e
  except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
    reason = " ".join(f"{type(e).__name__}: {e}".split())
    raise PackError(f"{packed} is damaged ({reason}): {FIX}") from e
  for s in splits:
    for c in classes:
      os.makedirs(os.path.join(root, s, c), exist_ok=True)
  for i, data in enumerate(files):
    with open(os.path.join(root, splits[split[i]], classes[label[i]], f"{i:05d}.jpg"), "wb") as f:
      f.write(data)
  return len(files)


if __name__ == "__main__":
  command, source, target, *rest = sys.argv[1:]
  if command == "pack":
    print(pack(source, target, per_class=int(rest[0]) if rest else 0), "files packed")
  elif command == "unpack":
    try:
      print(unpack(source, target), "files written")
    except PackError as e:
      raise SystemExit(f"jpeg_pack.py: {e}") from None
  else:
    raise SystemExit("usage: jpeg_pack.py pack|unpack SOURCE TARGET [PER_CLASS]")
