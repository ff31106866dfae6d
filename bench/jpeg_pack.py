"""An image folder's files packed into one .npz of raw bytes, and unpacked again.

The GPU machine receives at most 64 MiB in all (docs: issue 14). CIFAR-10's 60,000 JPEGs are
55 MB of file bytes, but a tar of them is ~90 MB (512-byte headers and padding per file) and
the decoded arrays 184 MB. One uncompressed .npz of the concatenated file bytes, their offsets
and their split and class adds ~0.5 MB; unpacking writes the same <split>/<class>/<name> tree
(files renamed by index) for the image_folder source.

    python bench/jpeg_pack.py pack /work/shared/data/cifar10-jpeg bench/gpu_payload/cifar10.npz
    python bench/jpeg_pack.py unpack bench/gpu_payload/cifar10.npz /tmp/cifar10-jpeg
"""

from __future__ import annotations

import os
import sys

import numpy as np


def pack(root: str, out: str, splits=("train", "test"), per_class: int = 0) -> int:
  """Packs root/<split>/<class>/* (the first `per_class` files of each class if > 0)."""
  classes = sorted(os.listdir(os.path.join(root, splits[0])))
  chunks, split_ids, class_ids = [], [], []
  for s, split in enumerate(splits):
    for c, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      files = sorted(os.listdir(folder))
      for file in files[:per_class] if per_class else files:
        with open(os.path.join(folder, file), "rb") as f:
          chunks.append(np.frombuffer(f.read(), np.uint8))
        split_ids.append(s)
        class_ids.append(c)
  offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
  np.savez(out, data=np.concatenate(chunks), offsets=offsets,
           split=np.asarray(split_ids, np.uint8), label=np.asarray(class_ids, np.uint8),
           splits=np.asarray(splits), classes=np.asarray(classes))
  return len(chunks)


def unpack(packed: str, root: str) -> int:
  """Writes the packed files as root/<split>/<class>/<index>.jpg; returns their count."""
  with np.load(packed) as z:
    data, offsets, split, label = z["data"], z["offsets"], z["split"], z["label"]
    splits, classes = list(z["splits"]), list(z["classes"])
  for s in splits:
    for c in classes:
      os.makedirs(os.path.join(root, s, c), exist_ok=True)
  for i in range(len(split)):
    path = os.path.join(root, splits[split[i]], classes[label[i]], f"{i:05d}.jpg")
    with open(path, "wb") as f:
      f.write(data[offsets[i]:offsets[i + 1]].tobytes())
  return len(split)


if __name__ == "__main__":
  command, source, target, *rest = sys.argv[1:]
  if command == "pack":
    print(pack(source, target, per_class=int(rest[0]) if rest else 0), "files packed")
  elif command == "unpack":
    print(unpack(source, target), "files written")
  else:
    raise SystemExit("usage: jpeg_pack.py pack|unpack SOURCE TARGET [PER_CLASS]")
