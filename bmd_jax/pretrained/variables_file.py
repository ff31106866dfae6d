"""A model's variables as one ``.npz``: every array of {'params', 'batch_stats'} in float32,
keyed ``params/<module>/<name>`` as in a packed export's float arrays (tools/export.py), so
one npz reader serves both. Read with numpy alone; no pickle is written or read."""

from __future__ import annotations

import io

import flax
import numpy as np

COLLECTIONS = ("params", "batch_stats")


def to_bytes(variables: dict) -> bytes:
  """The npz file's bytes of {'params', 'batch_stats'}."""
  arrays = {}
  for collection in COLLECTIONS:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables.get(collection, {})),
                                           sep="/")
    arrays.update({f"{collection}/{k}": np.asarray(v, np.float32) for k, v in flat.items()})
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def from_bytes(data: bytes) -> dict:
  """{'params', 'batch_stats'} of an npz file's bytes, as numpy arrays."""
  grouped = {c: {} for c in COLLECTIONS}
  with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
    for key in arrays.files:
      collection, rest = key.split("/", 1)
      if collection not in grouped:
        raise ValueError(f"array {key} is of no collection in {COLLECTIONS}")
      grouped[collection][rest] = arrays[key]
  return {c: flax.traverse_util.unflatten_dict(v, sep="/") for c, v in grouped.items()}
