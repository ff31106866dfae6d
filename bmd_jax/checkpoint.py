"""Checkpoints: an Orbax CheckpointManager per training stage, and teacher loading.

Each checkpoint holds the train state (step, params, batch statistics, optimizer state),
the data iterator's position (grain's own checkpoint handler; none on the device input path,
where the step alone determines the next batch) and a JSON record of the stage and the config,
so a restarted run continues with exactly the batch that would have come next. Saves are asynchronous; Orbax writes each into a temporary folder and renames it
when complete, so a kill at any moment leaves the last finished checkpoint readable.

Layout: ``<workdir>/checkpoints/<stage>/<step>/{state,data,meta}``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def stage_directory(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", stage)


def create_manager(workdir: str, stage: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(stage_directory(workdir, stage), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator, meta: dict,
         wait: bool = False) -> None:
  """Starts an asynchronous save (or a synchronous one with wait=True); `data_iterator` None
  (the device input path) saves no data item."""
  items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    import grain  # only the grain input path has an iterator to save
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  if wait:
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator):
  """(state, meta) of the newest checkpoint, with the data iterator (if not None) moved to its
  position; None where the stage has none. `abstract_state` gives the structure (Orbax would otherwise
  turn optax's NamedTuple states into lists) and the shardings."""
  step = manager.latest_step()
  if step is None:
    return None
  items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
  if data_iterator is not None:
    import grain
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
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
