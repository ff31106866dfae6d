"""Device mesh and shardings: data parallelism with jax.jit and NamedSharding (no pmap).

The mesh has one axis, ``data``, over every device of every process. Batches are split
along it; the train state is replicated. Under jit, BatchNorm statistics are computed over
the global batch, so results do not depend on the device count.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'data' over the given devices (default: all, of every process)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(
        f"{what} {batch_size} is not divisible by the {devices} devices of the mesh; "
        f"choose a multiple of {devices} (e.g. {max(devices, batch_size // devices * devices)})")


def global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's batch -> global arrays split over the mesh's data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (e.g. the train state) on every device of the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))
