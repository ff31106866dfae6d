"""Checkpoints: writing, resuming, finding, choosing, reading and checking them.

Training keeps an Orbax CheckpointManager per stage (save, restore_latest). The tools
(export, analyze) find and choose a workdir's checkpoints here (list_checkpoints,
choose_checkpoint) and read them (read_meta, read_variables; read_chosen falls back past a
damaged newest one, as restore_latest does); a stage that starts from other weights
(init_from, teacher, distill_teacher) resolves its source (checkpoint_source) and loads it
checked against its model's shapes (load_variables).

Each checkpoint holds the train state (step, params, batch statistics, optimizer state),
the data iterator's position (grain's own checkpoint handler; none on the device input path,
where the step alone determines the next batch) and a JSON record of the stage and the config,
so a restarted run continues with exactly the batch that would have come next. Saves are
asynchronous; Orbax writes each into a temporary folder and renames it when complete, so a
kill at any moment leaves the last finished checkpoint readable. Each also holds the sha256 of
every state array, checked whenever the state is read (see "checksums" below).

Layout: ``<workdir>/checkpoints/<stage>/<step>/{state,data,meta,checksums}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import sys
from typing import Any

import jax
import jax.experimental.multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bmd_jax.infra import config_files, paths

log = logging.getLogger("bmd_jax")


def stage_directory(workdir: paths.PathLike, stage: str) -> epath.Path:
  """``<workdir>/checkpoints/<stage>``; a URL workdir (gs://...) stays a URL."""
  return paths.resolve(workdir) / "checkpoints" / stage


def create_manager(workdir: str, stage: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  # cleanup_tmp_directories: a save abandoned by a killed or failed run leaves a temporary
  # folder; it is removed when the stage is opened again.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(stage_directory(workdir, stage), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator, meta: dict,
         wait: bool = False) -> None:
  """Starts an asynchronous save (or a synchronous one with wait=True); `data_iterator` None
  (the device input path) saves no data item."""
  items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta),
           CHECKSUMS: ocp.args.JsonSave(checksum_record(state))}
  if data_iterator is not None:
    import grain  # only the grain input path has an iterator to save
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  if wait:
    manager.wait_until_finished()


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); names what was kept."""


def finished_steps(directory: paths.PathLike) -> list[int]:
  """Steps of the complete checkpoints in a stage folder, oldest first. Orbax renames a
  save's temporary folder to its step only once every part is written."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit())


def kept_description(directory: paths.PathLike) -> str:
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


def disk_full(error: BaseException) -> BaseException | None:
  """The ENOSPC/EDQUOT error in `error`'s chain (Orbax wraps its writers' errors): an OSError,
  or TensorStore's I/O error that quotes the code (paths.os_error)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    code, _ = paths.os_error(error)
    if code in (errno.ENOSPC, errno.EDQUOT):
      return error
    error = error.__cause__ or error.__context__
  return None


def write_failure(error: BaseException, directory: paths.PathLike) -> CheckpointWriteError:
  """One line for a checkpoint that could not be written: the path, the cause, what is kept."""
  cause = disk_full(error)
  where = (paths.os_error(cause)[1] if cause is not None else None) or directory
  reason = "the disk is full" if cause is not None else f"{type(error).__name__}: {error}"
  return CheckpointWriteError(
      f"could not write a checkpoint under {where}: {reason}; {kept_description(directory)}. "
      "Free space (or give another --workdir) and run the same command to resume from it")


class _OneLineOrbaxErrors(logging.Filter):
  """Drops the traceback of Orbax's own error logs (a failed background save logs three):
  the loop reports the failure itself, in one line naming the path and what is kept."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and "orbax" in record.pathname:
      record.exc_info, record.exc_text = None, None
    return True


def one_line_orbax_errors() -> None:
  """For command lines: Orbax's error logs (through absl) without their tracebacks."""
  logging.getLogger("absl").addFilter(_OneLineOrbaxErrors())


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jax.numpy.issubdtype(x.dtype,
                                                                             jax.numpy.inexact)]
  return jax.numpy.all(jax.numpy.array([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))


def all_finite(tree: Any) -> bool:
  """Whether every float array of `tree` is finite: a state to save must be."""
  return bool(_all_finite(tree))


# --- checksums ---------------------------------------------------------------------------------

# Each save writes, as an item of the same save ("checksums", JSON), the sha256 of every array
# of the state it is handed; every read of a state (resuming, export, analyze, summary,
# teachers, init_from) compares the arrays it read with them. A changed bit on disk, a copy gone
# wrong or a writer's bug then makes a checkpoint "damaged", as an unreadable one is.
#
# The checksums are computed from the state in memory when the save starts, not from the files
# once written: that way they are part of the save itself, which Orbax commits with the state
# in one step (the temporary folder is renamed, or commit_success.txt written, once every item
# is complete). A finished checkpoint therefore never lacks them, and no kill between "the save
# finished" and "its checksums were written" exists to reason about. A checkpoint without them
# was written before bmd_jax stored them (or by another tool): it is read unverified, with a
# line in the log, since nothing says it is damaged and older workdirs must keep resuming.
#
# Multi-process runs: a process hashes and checks the arrays it holds whole, which is every
# array of a data-parallel state (replicated on every device). An array split over processes
# (FSDP on several hosts) is neither hashed nor checked; Orbax's own checks are all it gets.
# Every process reads the same bytes of an array it holds whole, so all reach one verdict.
CHECKSUMS = "checksums"
CHECKSUM_ALGORITHM = "sha256 of each array's bytes in C order"


class CheckpointDamagedError(RuntimeError):
  """A checkpoint cannot be read, or no checkpoint of a stage can, though some exist."""


class ChecksumMismatchError(CheckpointDamagedError):
  """An array of a checkpoint differs from the checksum saved with it: the checkpoint is
  damaged (restore_latest and the tools then use an older one)."""


def array_sha256(value) -> str:
  """The sha256 of an array's bytes in C order (the content hash of checkpoints and exports)."""
  value = np.ascontiguousarray(value)
  return hashlib.sha256(value.reshape(-1).view(np.uint8)).hexdigest()


def _named_arrays(tree: Any) -> dict[str, Any]:
  """{name: leaf} under the names Orbax stores ('params/conv0/kernel', 'opt_state/0/mu/...'):
  the same for a train state and for the tree read back from its checkpoint. Empty nodes are
  kept (and hold no array): weight decay's EmptyState in the optimizer state made
  serialize_tree fail without them, so the CIFAR-10 recipe could not save."""
  flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True))
  return {"/".join(str(k) for k in key): value for key, value in flat.items()}


def _whole_here(value: Any) -> Any:
  """`value` where this process holds all of it (one shard of a replicated array), else None;
  None too for a Python number, which Orbax may read back as another dtype."""
  if not isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return None
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    return value.addressable_shards[0].data if value.is_fully_replicated else None
  return value


def array_checksums(tree: Any) -> dict[str, str]:
  """{name: sha256} of the arrays of `tree` this process holds whole. Hashing runs at about
  350 MB/s on one busy CPU core: 0.3 s for ResNet-18's train state, once a save."""
  whole = {name: _whole_here(v) for name, v in _named_arrays(tree).items()}
  host = jax.device_get({name: v for name, v in whole.items() if v is not None})
  return {name: array_sha256(v) for name, v in host.items()}


def checksum_record(state: Any) -> dict:
  """What a save writes as its "checksums" item. Only the primary process's is written, so the
  others skip the work."""
  arrays = array_checksums(state) if jax.process_index() == 0 else {}
  return {"algorithm": CHECKSUM_ALGORITHM, "arrays": arrays}


def _saved_checksums(step_dir: paths.PathLike) -> dict[str, str] | None:
  """{name: sha256} saved with the checkpoint at `step_dir`; None where it has none."""
  path = epath.Path(step_dir) / CHECKSUMS / "metadata"
  if not path.exists():
    return None
  try:
    return dict(json.loads(path.read_text())["arrays"])
  except (ValueError, KeyError, TypeError) as e:  # a damaged record is a damaged checkpoint
    raise ChecksumMismatchError(f"checkpoint {step_dir}: its checksums cannot be read "
                                f"({_first_line(e)})") from None


def verify(state: Any, step_dir: paths.PathLike) -> None:
  """Raises ChecksumMismatchError, naming the array, where an array of `state` (as read from
  the checkpoint at `step_dir`) differs from the checksum saved with it."""
  saved = _saved_checksums(step_dir)
  if saved is None:
    log.info("checkpoint %s has no checksums (written before bmd_jax saved them); read "
             "unverified", step_dir)
    return
  found = array_checksums(state)
  for name, digest in saved.items():
    if name in found and found[name] != digest:
      raise ChecksumMismatchError(
          f"checkpoint {step_dir}: array {name} differs from the checksum saved with it (its "
          "files changed after the save)")


# --- resuming ------------------------------------------------------------------------------

# Fields that may differ between a checkpoint's config and the config resuming it (a prefix
# covers its sub-fields). They change what is logged, evaluated or kept, where the same data is
# read from, and how the work is spread over devices or scheduled; never what is trained.
# `stages` and `stage_overrides` are here because the resolved fields of the stage being resumed
# are compared one by one. Deliberately absent: num_epochs and num_train_steps (the learning
# rate and EDE schedules span the whole run, so changing the length mid-run makes the learning
# rate jump), batch_size, the model, loss, optimizer, data and seed fields. Anything else needs
# --config.resume_despite_config_change=True, which is then logged with the differences.
RESUMABLE_FIELDS = (
    "stages", "stage_overrides",
    "log_every_steps", "eval_every_epochs", "steps_per_eval", "eval_batch_size",
    "checkpoint_every_steps", "checkpoint_every_epochs", "checkpoint_every_minutes",
    "checkpoint_keep", "eval_precision", "steps_per_dispatch", "stop_at_time",
    "log_term_gradients", "log_layer_diagnostics",
    "data_dir", "cache_decoded_images",
    "num_devices", "fsdp",
    "model.store_binary_input",  # where XLA:CPU stores the binary inputs: speed, not values
    "resume_despite_config_change",
)


class ConfigChangedError(ValueError):
  """A workdir's checkpoint was written with another config than the one resuming it."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _resumable(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS)


def config_differences(saved: dict, current: dict) -> list[str]:
  """'field: old -> new' for every field outside RESUMABLE_FIELDS that differs. A field only
  one side has (added to or removed from the code since the checkpoint) is not compared, so
  old checkpoints stay readable."""
  old, new = _flatten(saved), _flatten(current)
  return [f"{k}: {old[k]!r} in the checkpoint, {new[k]!r} now"
          for k in sorted(set(old) & set(new)) if not _resumable(k) and old[k] != new[k]]


def _saved_config(meta: dict) -> dict | None:
  stored = meta.get("config")
  if isinstance(stored, str):  # as written by train_stage: config.to_json()
    stored = json.loads(stored)
  return config_files.upgraded(stored) if isinstance(stored, dict) else None


def check_resume_config(meta: dict, config, where: str) -> list[str]:
  """Refuses to resume the checkpoint at `where` under a config that differs from its own
  outside RESUMABLE_FIELDS, unless config.resume_despite_config_change; returns the
  differences (logged as a warning when continued on purpose)."""
  saved = _saved_config(meta)
  if saved is None:
    log.warning("checkpoint %s records no config; it is resumed without comparing", where)
    return []
  differences = config_differences(saved, json.loads(config.to_json()))
  if not differences:
    return []
  listed = "; ".join(differences)
  if not config.get("resume_despite_config_change", False):
    raise ConfigChangedError(
        f"the workdir's checkpoint {where} was written with another config: {listed}. Give a "
        "new --workdir to train with this config, or pass "
        "--config.resume_despite_config_change=True to continue that checkpoint under it on "
        f"purpose. Fields that may change on resume: {', '.join(RESUMABLE_FIELDS)}")
  log.warning("resuming %s under a changed config on purpose "
              "(resume_despite_config_change): %s", where, listed)
  return differences


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def _set_aside(manager: ocp.CheckpointManager, damaged: list) -> None:
  """Renames damaged step folders (process 0) once an older one is restored, so that their
  steps can be written again, and says so."""
  for step, error in damaged:
    folder = epath.Path(manager.directory) / str(step)
    if jax.process_index() == 0:
      folder.rename(f"{folder}.damaged")
    log.warning("checkpoint %s is damaged (%s); moved to %s.damaged and resumed from the "
                "newest readable one", folder, _first_line(error), folder)
  jax.experimental.multihost_utils.sync_global_devices("damaged checkpoints set aside")
  manager.reload()


def set_aside_after(manager: ocp.CheckpointManager, step: int, suffix: str, why: str) -> None:
  """Renames the step folders after `step` to <step>.<suffix> (process 0; a free name if
  that one is taken), says why, and reloads the manager: kept on disk, out of its way."""
  for newer in sorted(s for s in manager.all_steps() if s > step):
    folder = epath.Path(manager.directory) / str(newer)
    target, n = epath.Path(f"{folder}.{suffix}"), 1
    while target.exists():
      n += 1
      target = epath.Path(f"{folder}.{suffix}{n}")
    if jax.process_index() == 0:
      folder.rename(target)
    log.warning("checkpoint %s moved to %s: %s", folder, target, why)
  jax.experimental.multihost_utils.sync_global_devices("checkpoints set aside")
  manager.reload()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator,
                   config=None):
  """(state, meta) of the newest readable checkpoint, with the data iterator (if not None)
  moved to its position; None where the stage has none.

  `abstract_state` gives the structure (Orbax would otherwise turn optax's NamedTuple states
  into lists) and the shardings. With `config`, the checkpoint's own config is compared first
  (check_resume_config). A newer checkpoint that cannot be read is moved to
  ``<step>.damaged`` with a warning once an older one is restored; so is one whose arrays differ
  from their checksums (verify). Where none is readable, an error names them and nothing is
  moved.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    where = str(epath.Path(manager.directory) / str(step))
    try:
      meta = _read_meta(manager, step)
    except Exception as e:  # pylint: disable=broad-except  (whatever a damaged file raises)
      damaged.append((step, e))
      continue
    changed = check_resume_config(meta, config, where) if config is not None else []
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:  # None: the device path, whose position is the step itself
      import grain  # pylint: disable=g-import-not-at-top  (not needed on the device path)
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      with _quiet_reads():
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      if changed:  # not damage: the forced config (e.g. another model) does not fit it
        raise ConfigChangedError(
            f"checkpoint {where} cannot be restored under the changed config "
            f"({'; '.join(changed)}): {_first_line(e)}. Give a new --workdir for this "
            "config") from e
      damaged.append((step, e))
      continue
    try:
      verify(restored.state, where)
    except ChecksumMismatchError as e:
      damaged.append((step, e))
      continue
    if damaged:
      _set_aside(manager, damaged)
    return restored.state, restored.meta
  if damaged:
    raise _none_readable(manager.directory, damaged)
  return None


def _none_readable(directory: paths.PathLike, damaged: list) -> CheckpointDamagedError:
  """The one-line error for a stage folder none of whose checkpoints (`damaged`: [(step,
  error)], newest first) can be read."""
  listed = "; ".join(f"{epath.Path(directory) / str(step)} ({_first_line(e)})"
                     for step, e in damaged)
  return CheckpointDamagedError(
      f"no checkpoint of stage folder {directory} can be read: {listed}. Move these folders "
      "out of the workdir to start the stage afresh, or restore them from a copy")


def abstract_like(tree: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


# --- finding a workdir's checkpoints (the tools: export, analyze) ----------------------------

@dataclasses.dataclass(frozen=True)
class Checkpoint:
  stage: str
  step: int
  path: str  # the step's folder (a local path or a URL)


def _state_steps(folder: epath.Path) -> list[int]:
  """Steps under a stage folder whose train state is written, oldest first."""
  return sorted(int(d.name) for d in folder.iterdir() if d.name.isdigit()
                and (d / "state").is_dir())


def list_checkpoints(workdir: paths.PathLike) -> dict[str, list[Checkpoint]]:
  """{stage: its finished checkpoints by step} of ``<workdir>/checkpoints``."""
  root = paths.resolve(workdir) / "checkpoints"
  if not root.is_dir():
    raise FileNotFoundError(f"{root} does not exist: --workdir must be a training run's "
                            "workdir (python -m bmd_jax.main ... --workdir=W)")
  found = {}
  for stage in sorted(d.name for d in root.iterdir()):
    steps = _state_steps(root / stage)
    if steps:
      found[stage] = [Checkpoint(stage, s, str(root / stage / str(s))) for s in steps]
  if not found:
    raise FileNotFoundError(f"no finished checkpoint in {root}")
  return found


class NoSuchCheckpointError(ValueError):
  """A stage or step asked for (export --stage/--step) that the workdir does not have."""


def read_meta(ckpt: Checkpoint) -> tuple[str, ml_collections.ConfigDict]:
  """(stage, config) recorded with a checkpoint; CheckpointDamagedError where it cannot be
  read (a missing or cut metadata file)."""
  try:
    meta = json.loads((epath.Path(ckpt.path) / "meta" / "metadata").read_text())
    config = config_files.upgraded(json.loads(meta["config"]))
    return meta["stage"], ml_collections.ConfigDict(config)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointDamagedError(f"checkpoint {ckpt.path}: its record of the stage and config "
                                 f"(meta/metadata) cannot be read ({_first_line(e)})") from None


def newest_readable(checkpoints: list[Checkpoint], read) -> tuple[Checkpoint, Any]:
  """(checkpoint, read(checkpoint)) of the newest of `checkpoints` (one stage's, oldest first)
  that `read` reads without CheckpointDamagedError. The newer damaged ones are logged, as
  training does, but not moved: a tool leaves the workdir as it is. Where none can be read,
  one CheckpointDamagedError names them all."""
  damaged = []
  for ckpt in reversed(checkpoints):
    try:
      result = read(ckpt)
    except CheckpointDamagedError as e:
      damaged.append((ckpt.step, e))
      continue
    for step, error in damaged:
      log.warning("checkpoint %s is damaged (%s); step %d is used instead",
                  epath.Path(ckpt.path).parent / str(step), _first_line(error), ckpt.step)
    return ckpt, result
  raise _none_readable(epath.Path(checkpoints[0].path).parent, damaged)


def _newest_config(checkpoints: list[Checkpoint]) -> ml_collections.ConfigDict:
  return newest_readable(checkpoints, read_meta)[1][1]


def stage_order(workdir: paths.PathLike) -> list[str]:
  """The stages with checkpoints, in the run's order (its config's ``stages``)."""
  found = list_checkpoints(workdir)
  config = _newest_config(next(iter(found.values())))
  order = [s.strip() for s in config.get("stages", "").split(",") if s.strip() in found]
  return order + [s for s in found if s not in order]


def choose_checkpoint(workdir: paths.PathLike, stage: str | None = None,
                      step: int | None = None, precision: str | None = "binary") -> Checkpoint:
  """The newest checkpoint of `stage`, or of the run's last stage trained in `precision`."""
  found = list_checkpoints(workdir)
  if stage is None:
    trained = {s: _newest_config(found[s]).model.precision for s in stage_order(workdir)}
    candidates = [s for s, p in trained.items() if precision is None or p == precision]
    if not candidates:
      raise NoSuchCheckpointError(
          f"no stage of {workdir} was trained in precision {precision!r}: "
          f"{', '.join(f'{s} in {p!r}' for s, p in trained.items())}"
          f"{_untrained_hint(_newest_config(found[list(trained)[-1]]), trained, precision)}")
    stage = candidates[-1]
  if stage not in found:
    raise NoSuchCheckpointError(f"no checkpoint of stage {stage!r} in {workdir}; stages: "
                                f"{sorted(found)}")
  if step is None:
    return found[stage][-1]
  for ckpt in found[stage]:
    if ckpt.step == step:
      return ckpt
  raise NoSuchCheckpointError(f"stage {stage!r} has no checkpoint at step {step}; steps: "
                              f"{[c.step for c in found[stage]]}")


def _untrained_hint(config: ml_collections.ConfigDict, trained: dict, precision: str) -> str:
  """Where the run's config defines a stage in `precision` not trained yet: how to train it."""
  overrides = config.get("stage_overrides") or {}
  missing = [s for s, o in overrides.items() if s not in trained
             and (o.get("model") or {}).get("precision") == precision]
  if not missing:
    return ""
  return (f". Its config's stage {missing[0]} trains in {precision!r}: run it first "
          f"(the same command with --config.stages={missing[0]} and this --workdir)")


def read_chosen(workdir: paths.PathLike, stage: str | None = None, step: int | None = None,
                precision: str | None = "binary"):
  """(checkpoint, stage, config, variables) of choose_checkpoint's choice. Where no step is
  asked for and the newest is damaged, the newest readable one before it (as training
  resumes); a step asked for is read or refused, never replaced."""
  chosen = choose_checkpoint(workdir, stage, step, precision)
  if step is not None:
    return chosen, *read_meta(chosen), read_variables(chosen)
  candidates = [c for c in list_checkpoints(workdir)[chosen.stage] if c.step <= chosen.step]
  ckpt, (meta, variables) = newest_readable(
      candidates, lambda c: (read_meta(c), read_variables(c)))
  return ckpt, *meta, variables


# --- reading variables -------------------------------------------------------------------------

def read_state(path: paths.PathLike) -> dict:
  """A saved train state as host numpy arrays, whatever device layout it was saved from
  (8 devices, several processes, FSDP): restored onto this process's first device, with the
  target built from the stored shapes (a restore without one would use the saved layout).
  Checked against the checksums saved with it; CheckpointDamagedError, in one line, where it
  cannot be read or differs from them."""
  path = epath.Path(path)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    with _quiet_reads(), ocp.StandardCheckpointer() as checkpointer:
      stored = checkpointer.metadata(path).item_metadata
      if stored is None:  # Orbax logs why and returns nothing
        raise CheckpointDamagedError(f"checkpoint {path}: its arrays' metadata cannot be read")
      target = jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored.tree)
      state = jax.device_get(checkpointer.restore(path, target))
  except CheckpointDamagedError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (whatever a damaged file raises)
    if not path.is_dir():
      raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    raise CheckpointDamagedError(f"checkpoint {path} cannot be read ({_first_line(e)})") from e
  verify(state, path.parent)
  return state


class _RedundantOrbaxWarnings(logging.Filter):
  """Drops Orbax's warnings that a ``<step>/state`` folder read on its own has no step-level
  metadata file (it never has: that file is the step folder's; on every read) and that an
  item's metadata could not be read (the error raised names the checkpoint)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("_CHECKPOINT_METADATA" in message or "Failed to get item metadata" in message)


class _UnretrievedReads(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not str(error).startswith("Encountered error while reading array index")


_UNRETRIEVED_READS = _UnretrievedReads()  # one filter, however often it is added


@contextlib.contextmanager
def _quiet_reads():
  """Reads a checkpoint without Orbax's noise: _RedundantOrbaxWarnings, and where a file is
  cut, the 'Event loop is closed' and read-failure tracebacks (26 to 40 for one digits
  checkpoint) that TensorStore's reads still in flight report through sys.unraisablehook (and
  asyncio's log) once Orbax has given up. They say nothing that the error raised does not, and
  they keep coming after it (while training goes on), so after a failed read their filters
  stay for the rest of the process."""
  previous = sys.unraisablehook

  def hook(unraisable):
    text = str(unraisable.exc_value)
    # Also the reads' own failures, when their futures are collected unretrieved (seen in
    # about one analyze run in four on a damaged checkpoint).
    if not ((isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in text)
            or text.startswith("Encountered error while reading array index")):
      previous(unraisable)

  absl_logger, quiet = logging.getLogger("absl"), _RedundantOrbaxWarnings()
  sys.unraisablehook = hook
  absl_logger.addFilter(quiet)
  # asyncio logs the same failures as "Task exception was never retrieved", with a traceback.
  logging.getLogger("asyncio").addFilter(_UNRETRIEVED_READS)
  try:
    yield
  except BaseException:
    raise  # the hook stays: the abandoned reads report later
  else:
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous
  finally:
    absl_logger.removeFilter(quiet)


def _variables_of(state: dict) -> dict:
  """{'params', 'batch_stats'} of a saved train state, as numpy arrays."""
  return jax.tree_util.tree_map(np.asarray, {"params": state["params"],
                                             "batch_stats": state.get("batch_stats", {})})


def read_variables(ckpt: Checkpoint) -> dict:
  """{'params', 'batch_stats'} of a checkpoint as numpy arrays."""
  return _variables_of(read_state(epath.Path(ckpt.path) / "state"))


def load_variables(path: paths.PathLike, expected: dict, what: str) -> dict:
  """{'params', 'batch_stats'} of the newest checkpoint under `path`, checked against `expected`.

  `path` is a stage's checkpoint folder (``<workdir>/checkpoints/<stage>``) or one step's
  folder inside it. Shapes must equal those of `expected` (the variables of the model that
  will use them); a mismatch is an error naming the first differing parameter. `what` names
  the checkpoint's role in every message ('WDM teacher checkpoint', 'init_from checkpoint',
  'distillation teacher checkpoint'), so that an error says which config field to fix.
  """
  path = paths.resolve(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{what} {path} does not exist; give a stage's "
                            "checkpoint folder, e.g. <workdir>/checkpoints/step1")
  step_dir = path
  if not (path / "state").is_dir():
    steps = _state_steps(path)
    if not steps:
      raise FileNotFoundError(f"{what} {path} holds no checkpoint; give a stage's checkpoint "
                              "folder, e.g. <workdir>/checkpoints/step1")
    step_dir = path / str(steps[-1])
  variables = _variables_of(read_state(step_dir / "state"))
  check_shapes(expected, variables, f"{what} {step_dir}")
  return variables


def check_shapes(expected: dict, given: dict, where: str) -> None:
  """Raises a ValueError, starting with `where` (what is loaded, from where), at the first
  parameter of `given` missing, extra or shaped otherwise than in `expected`."""
  flat_expected = {jax.tree_util.keystr(k): np.shape(v)
                   for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  flat_given = {jax.tree_util.keystr(k): np.shape(v)
                for k, v in jax.tree_util.tree_leaves_with_path(given)}
  for key, shape in flat_expected.items():
    if key not in flat_given:
      raise ValueError(f"{where} lacks parameter {key}: it is of another "
                       "architecture than the model")
    if flat_given[key] != shape:
      raise ValueError(f"{where}: parameter {key} has shape "
                       f"{flat_given[key]}, the model expects {shape}")
  extra = sorted(set(flat_given) - set(flat_expected))
  if extra:
    raise ValueError(f"{where} has parameters the model lacks: {extra[:3]}")


def write_variables(folder: paths.PathLike, variables: dict, step: int) -> None:
  """Writes {'params', 'batch_stats'} as ``<folder>/<step>/state``: a checkpoint folder that
  load_variables reads (init_from, teacher, distill_teacher), e.g. a converted model, with
  its checksums. They are written once the state is: a kill between the two leaves a state
  without them, read unverified as an older checkpoint is (a tool's output is made again)."""
  step_dir = paths.resolve(folder) / str(step)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(step_dir / "state", variables)
  (step_dir / CHECKSUMS).mkdir(exist_ok=True)
  (step_dir / CHECKSUMS / "metadata").write_text(json.dumps(checksum_record(variables)))


# --- resolving a source (init_from, teacher, distill_teacher) ----------------------------------

def checkpoint_source(reference: str, workdir: paths.PathLike, stage: str, what: str) -> str:
  """The checkpoint folder that `reference` (a stage name, a path or a URL) points to."""
  candidate = stage_directory(workdir, reference)
  if candidate.is_dir():
    return str(candidate)
  if epath.Path(reference).is_dir():
    return reference
  if _looks_like_path(reference):  # a folder was meant: a hint to run a stage would mislead
    raise FileNotFoundError(
        f"stage {stage!r} needs {what} from {reference!r}, which does not exist: give the "
        "checkpoint folder of a finished stage (<workdir>/checkpoints/<stage>) or the name of "
        "an earlier stage of this run")
  raise FileNotFoundError(
      f"stage {stage!r} needs {what} {reference!r}, which is neither a finished stage in "
      f"{paths.resolve(workdir) / 'checkpoints'} nor an existing folder: run that stage first "
      f"(--config.stages={reference},{stage}) or give a checkpoint folder")


# What each config field that names a checkpoint loads, for messages.
SOURCE_FIELDS = {"init_from": "initial weights", "teacher": "the WDM teacher",
                 "distill_teacher": "the distillation teacher"}


def load_source(config: ml_collections.ConfigDict, field: str, workdir: paths.PathLike,
                stage: str, expected: dict) -> tuple[str, dict]:
  """(folder, variables) of the checkpoint that `config.<field>` names for `stage`, checked
  against `expected`; every message names the field, so the user knows which one to fix."""
  path = checkpoint_source(config[field], workdir, stage, f"{SOURCE_FIELDS[field]} "
                           f"(config.{field})")
  return path, load_variables(path, expected, f"config.{field} checkpoint")


def _looks_like_path(reference: str) -> bool:
  return paths.is_url(reference) or os.sep in reference or reference.startswith((".", "~")) or (
      os.altsep is not None and os.altsep in reference)
