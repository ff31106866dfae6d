"""Device mesh, shardings and multi-host start-up: jax.jit with NamedSharding (no pmap).

The mesh has one axis, ``data``, over every device of every process (or the first
``config.num_devices`` of them on one process). Batches are split along it. The train state
is replicated by default; with ``config.fsdp`` each large parameter (and its optimizer
moments) is split along its largest dimension that the device count divides, FSDP-style,
over the same axis, and XLA gathers it where the step needs it. Under jit, BatchNorm
statistics are computed over the global batch, so results do not depend on the device count
(up to float32 summation order).

Multi-host: every process runs the same command; `initialize_distributed` starts JAX's
runtime (explicit coordinator, or detected on TPU pods and SLURM), each process reads its
own data shard (input_pipeline.py) and `global_batch` joins the shards into global arrays.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bmd_jax.infra.config_checks import ConfigValueError

DATA_AXIS = "data"
# Leaves smaller than this stay replicated under FSDP: splitting them saves nothing and
# costs a gather each.
FSDP_MIN_SIZE = 2 ** 12

log = logging.getLogger("bmd_jax")


# --- multi-host start-up ------------------------------------------------------------------

# Environment variables that mark a TPU VM (pod) worker or a multi-task SLURM step, where
# jax.distributed.initialize() finds the coordinator, process count and id by itself.
_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "TPU_ACCELERATOR_TYPE",
            "CLOUD_TPU_TASK_ID")


def _cluster_detected() -> str | None:
  if any(os.environ.get(v) for v in _TPU_ENV) or os.path.exists("/dev/accel0"):
    return "TPU"
  if int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1"))) > 1:
    return "SLURM"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  return None


def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts jax.distributed where this run spans several processes; returns whether it did.

  mode 'off': never (one process). 'on': always; without an address, JAX detects the
  cluster (TPU pod, SLURM, Open MPI) or fails saying why. 'auto' (default): with an address,
  or when a TPU VM or a multi-task SLURM / Open MPI job is detected. The address, process
  count and id come from the arguments, else from JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID. Must run before anything touches a device.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"unknown distributed mode {mode!r}; choose 'auto', 'on' or 'off'")
  if mode == "off":
    return False
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if address is not None:
    if num_processes is None or process_id is None:
      raise ValueError(
          f"coordinator address {address} given without the process count and this "
          "process's id: pass --num_processes and --process_id (or JAX_NUM_PROCESSES and "
          "JAX_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id {process_id} is not in [0, {num_processes})")
    jax.distributed.initialize(address, num_processes, process_id)
  else:
    cluster = _cluster_detected()
    if mode == "auto" and cluster is None:
      return False
    jax.distributed.initialize()  # JAX's own cluster detection
  log.info("process %d of %d; %d local devices of %d", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# --- mesh ------------------------------------------------------------------------------

def create_mesh(devices=None, num_devices: int = -1) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all, of every process), or over the
  first `num_devices` of them (one process only). A `Mesh` built directly has Auto axes."""
  devices = list(devices if devices is not None else jax.devices())
  if num_devices is not None and num_devices > 0:
    if num_devices > len(devices):
      raise ValueError(
          f"the mesh asks for {num_devices} devices (config.num_devices) but only "
          f"{len(devices)} exist ({jax.process_count()} processes x "
          f"{jax.local_device_count()} local {devices[0].platform} devices); "
          f"set config.num_devices to at most {len(devices)}, or -1 for all")
    if num_devices < len(devices) and jax.process_count() > 1:
      raise ValueError(
          f"config.num_devices={num_devices} leaves out devices of a {jax.process_count()}-"
          f"process run ({len(devices)} devices); every process needs its devices in the "
          "mesh: set config.num_devices=-1")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def mesh_from_config(config) -> Mesh:
  """The mesh config.num_devices asks for (-1 or absent: every device), checked against
  config.batch_size and config.eval_batch_size."""
  mesh = create_mesh(num_devices=config.get("num_devices", -1))
  check_batch_size(config.batch_size, mesh)
  check_batch_size(config.get("eval_batch_size", config.batch_size), mesh, "eval_batch_size")
  return mesh


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """A global batch must split evenly over the mesh's devices and over the processes."""
  devices = mesh.devices.size
  processes = jax.process_count()
  if batch_size % devices:
    lower = batch_size // devices * devices
    suggestion = f"{lower} or {lower + devices}" if lower else f"{devices}"
    raise ConfigValueError(
        f"config.{what}={batch_size} is not divisible by the {devices} devices of the mesh "
        f"({processes} process(es)); the global batch is split evenly over devices: "
        f"choose a multiple of {devices}, e.g. {suggestion}")
  if batch_size % processes:
    raise ConfigValueError(f"config.{what}={batch_size} is not divisible by the {processes} "
                           f"processes; choose a multiple of {processes}")


# --- shardings --------------------------------------------------------------------------

def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], num_devices: int,
              min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
  """Splits the largest dimension that `num_devices` divides; small leaves stay whole."""
  if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return PartitionSpec()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % num_devices == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return PartitionSpec(*spec)
  return PartitionSpec()


def state_sharding(state: Any, mesh: Mesh, fsdp: bool = False,
                   min_size: int = FSDP_MIN_SIZE) -> Any:
  """Shardings of a train state (any pytree): replicated, or FSDP-split (see fsdp_spec).

  Optimizer moments have their parameter's shape, so they are split the same way.
  """
  def leaf(x):
    if not fsdp:
      return replicated_sharding(mesh)
    return NamedSharding(mesh, fsdp_spec(np.shape(x), mesh.devices.size, min_size))
  return jax.tree_util.tree_map(leaf, state)


def place(tree: Any, shardings: Any) -> Any:
  """Puts a pytree whose values every process holds identically onto the mesh."""
  return jax.device_put(tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (e.g. the frozen teacher) on every device of the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))


def global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's batch -> global arrays split over the mesh's data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def equal_batch_count(local_batches: Iterator[dict]) -> Iterator[dict]:
  """This process's eval batches, followed by fully masked copies until every process has
  run out, so all processes run the jitted (collective) eval step equally often.

  Shards of an eval split may differ by an example, and hence by a batch, between
  processes; a process that stopped early would leave the others waiting forever.
  """
  if jax.process_count() == 1:
    yield from local_batches
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  template = None
  iterator = iter(local_batches)
  while True:
    batch = next(iterator, None)
    more = multihost_utils.process_allgather(np.int32(batch is not None))
    if not np.any(more):
      return
    if batch is None:
      if template is None:
        raise ValueError("this process's eval shard is empty: the eval split has fewer "
                         "examples than processes")
      batch = {k: np.zeros_like(v) for k, v in template.items()}  # mask all False
    template = batch
    yield batch
