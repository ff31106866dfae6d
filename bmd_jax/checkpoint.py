"""Checkpoints: an Orbax CheckpointManager per training stage, and teacher loading.

Each checkpoint holds the train state (step, params, batch statistics, optimizer state),
the data iterator's position (grain's own checkpoint handler) and a JSON record of the
stage and the config, so a restarted run continues with exactly the batch that would have
come next. Saves are asynchronous; Orbax writes each into a temporary folder and renames it
when complete, so a kill at any moment leaves the last finished checkpoint readable.

Layout: ``<workdir>/checkpoints/<stage>/<step>/{state,data,meta}``.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def stage_directory(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", stage)


def create_manager(workdir: str, stage: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  # cleanup_tmp_directories: a save abandoned by a killed or failed run leaves a temporary
  # folder; it is removed when the stage is opened again.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(stage_directory(workdir, stage), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator, meta: dict,
         wait: bool = False) -> None:
  """Starts an asynchronous save (or a synchronous one with wait=True)."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      meta=ocp.args.JsonSave(meta)), force=True)
  if wait:
    manager.wait_until_finished()


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); names what was kept."""


def finished_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in a stage folder, oldest first. Orbax renames a
  save's temporary folder to its step only once every part is written."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def kept_description(directory: str) -> str:
  steps = finished_steps(directory)
  if not steps:
    return f"no checkpoint was kept in {directory}"
  return f"the checkpoint kept is step {steps[-1]} in {directory}"


def settle(manager: ocp.CheckpointManager) -> tuple[str, BaseException | None]:
  """Finishes the in-flight save, if any, on a way out of the training loop.

  Returns (what is kept, the save's own error or None). A save that fails here is abandoned:
  its temporary folder is removed when the stage is opened again.
  """
  failure = None
  try:
    manager.wait_until_finished()
  except Exception as e:  # the save's error is reported with what it left, not raised over
    failure = e
  return kept_description(str(manager.directory)), failure


def disk_full(error: BaseException) -> OSError | None:
  """The ENOSPC/EDQUOT OSError in `error`'s chain (Orbax wraps its writers' errors)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return error
    error = error.__cause__ or error.__context__
  return None


def write_failure(error: BaseException, directory: str) -> CheckpointWriteError:
  """One line for a checkpoint that could not be written: the path, the cause, what is kept."""
  cause = disk_full(error)
  where = getattr(cause, "filename", None) or directory
  reason = "the disk is full" if cause is not None else f"{type(error).__name__}: {error}"
  return CheckpointWriteError(
      f"could not write a checkpoint under {where}: {reason}; {kept_description(directory)}. "
      "Free space (or give another --workdir) and run the same command to resume from it")


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jax.numpy.issubdtype(x.dtype,
                                                                             jax.numpy.inexact)]
  return jax.numpy.all(jax.numpy.array([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))


def all_finite(tree: Any) -> bool:
  """Whether every float array of `tree` is finite: a state to save must be."""
  return bool(_all_finite(tree))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator):
  """(state, meta) of the newest checkpoint, with the data iterator moved to its position;
  None where the stage has none. `abstract_state` gives the structure (Orbax would otherwise
  turn optax's NamedTuple states into lists) and the shardings."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator),
      meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta


def abstract_like(tree: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def load_variables(path: str, expected: dict) -> dict:
  """{'params', 'batch_stats'} of the newest checkpoint under `path`, checked against `expected`.

  `path` is a stage's checkpoint folder (``<workdir>/checkpoints/<stage>``) or one step's
  folder inside it. Shapes must equal those of `expected` (the teacher model's own
  variables); a mismatch is an error naming the first differing parameter.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"teacher checkpoint {path} does not exist; give a stage's "
                            "checkpoint folder, e.g. <workdir>/checkpoints/step1")
  step_dir = path
  if not os.path.isdir(os.path.join(path, "state")):
    steps = [int(d) for d in os.listdir(path) if d.isdigit()
             and os.path.isdir(os.path.join(path, d, "state"))]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {path}")
    step_dir = os.path.join(path, str(max(steps)))
  raw = read_state(os.path.join(step_dir, "state"))
  variables = {"params": raw["params"], "batch_stats": raw.get("batch_stats", {})}
  _check_shapes(expected, variables, step_dir)
  return jax.tree_util.tree_map(np.asarray, variables)


def read_state(path: str) -> dict:
  """A saved train state as host numpy arrays, whatever device layout it was saved from
  (8 devices, several processes, FSDP): restored onto this process's first device."""
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata.tree)
  return jax.device_get(checkpointer.restore(path, target))


def _check_shapes(expected: dict, given: dict, where: str) -> None:
  flat_expected = {jax.tree_util.keystr(k): np.shape(v)
                   for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  flat_given = {jax.tree_util.keystr(k): np.shape(v)
                for k, v in jax.tree_util.tree_leaves_with_path(given)}
  for key, shape in flat_expected.items():
    if key not in flat_given:
      raise ValueError(f"teacher checkpoint {where} lacks parameter {key}: it is of another "
                       "architecture than the model")
    if flat_given[key] != shape:
      raise ValueError(f"teacher checkpoint {where}: parameter {key} has shape "
                       f"{flat_given[key]}, the model expects {shape}")
  extra = sorted(set(flat_given) - set(flat_expected))
  if extra:
    raise ValueError(f"teacher checkpoint {where} has parameters the model lacks: {extra[:3]}")
