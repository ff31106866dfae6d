"""One run per workdir: a lock file that process 0 holds while a run trains.

Two runs sharing a workdir write every metric twice and the same checkpoint steps twice (or
the second dies in Orbax). ``<workdir>/run.lock`` is created atomically (O_EXCL) by process 0 of
a run; the other processes of a multi-host run share it through process 0. It records the
holder's host, process id and a heartbeat time that a thread refreshes every
HEARTBEAT_SECONDS. A lock left by a killed run is taken over, with a warning:

- on the same host, when its process no longer exists;
- from another host (or a shared file system where no process id can be checked), when its
  heartbeat is older than STALE_SECONDS.

A URL workdir (gs://...) has no atomic create-if-absent through epath: the lock is written when
absent and read back, so two runs starting within the same moment may both believe they hold
it; the loser's heartbeat then finds the lock taken over and logs an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from bmd_jax import paths

log = logging.getLogger("bmd_jax")

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


@dataclasses.dataclass
class WorkdirLock:
  """A held lock (or, on processes other than 0, a stand-in that holds nothing)."""

  path: epath.Path | None
  record: dict | None = None
  heartbeat_seconds: float = HEARTBEAT_SECONDS
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: threading.Thread | None = None

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      if _read(self.path) != self.record:  # taken over after a stall: say so, keep training
        log.error("workdir lock %s was taken over by another run; this run no longer owns the "
                  "workdir", self.path)
        return
      self.record = {**self.record, "heartbeat": time.time()}
      _write_atomically(self.path, self.record)

  def start_heartbeat(self) -> None:
    if self.path is not None:
      self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
      self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.path is not None and _read(self.path) == self.record:
      self.path.unlink()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _read(path: epath.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _write_atomically(path: epath.Path, record: dict) -> None:
  if paths.is_url(path):  # an object appears whole when its upload completes
    path.write_text(json.dumps(record))
    return
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(record))
  tmp.replace(path)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def stale_reason(record: dict | None, mtime: float, now: float,
                 stale_seconds: float = STALE_SECONDS) -> str | None:
  """Why a found lock belongs to no live run (then it may be taken over), or None."""
  if record is None:  # unreadable: a holder killed while writing it, judged by the file's age
    age = now - mtime
    return f"unreadable, {age:.0f} s old" if age > stale_seconds else None
  if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
    if not _pid_alive(record["pid"]):
      return f"process {record['pid']} on {record['host']} no longer exists"
    return None
  age = now - float(record.get("heartbeat", mtime))
  if age > stale_seconds:
    return f"its heartbeat stopped {age:.0f} s ago"
  return None


def check_workdir(workdir: paths.PathLike) -> epath.Path:
  """The workdir (local: absolute; a URL as it is), created; an error names a path that is a
  file."""
  path = paths.resolve(workdir)
  probe = paths.blocking_file(path)
  if probe is not None:
    raise NotADirectoryError(f"--workdir {workdir}: {probe} is a file, not a folder; give a "
                             "folder for the run (it is created if missing)")
  path.mkdir(parents=True, exist_ok=True)
  return path


def acquire(workdir: paths.PathLike, stale_seconds: float = STALE_SECONDS,
            heartbeat_seconds: float = HEARTBEAT_SECONDS) -> WorkdirLock:
  """Takes the workdir's lock (process 0), or raises WorkdirLockedError naming its holder.
  Every process of a multi-host run learns process 0's outcome, so none trains alone."""
  path = check_workdir(workdir) / LOCK_NAME
  lock, error = WorkdirLock(None), None
  if jax.process_index() == 0:
    try:
      lock = _acquire_here(path, stale_seconds, heartbeat_seconds)
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not taken and error is None:
      error = WorkdirLockedError(f"process 0 could not take the workdir lock {path}; its log "
                                 "says why")
  if error is not None:
    raise error
  return lock


def _acquire_here(path: epath.Path, stale_seconds: float, heartbeat_seconds: float) -> WorkdirLock:
  record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "heartbeat": time.time()}
  for _ in range(3):  # a lock that vanishes between our checks is tried again
    if _create(path, record):
      lock = WorkdirLock(path, record, heartbeat_seconds)
      lock.start_heartbeat()
      return lock
    _take_over_if_stale(path, stale_seconds)
  raise WorkdirLockedError(f"could not take the workdir lock {path}; try again")


def _create(path: epath.Path, record: dict) -> bool:
  """Creates the lock holding `record` unless one exists; whether it did."""
  if paths.is_url(path):
    return _create_object(path, record)
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(record, f)
  return True


def _create_object(path: epath.Path, record: dict) -> bool:
  """An object store's best effort at O_EXCL: write when absent, then read it back (of two
  simultaneous writers the last one wins, and the other sees so here or at its heartbeat)."""
  if path.exists():
    return False
  path.write_text(json.dumps(record))
  return _read(path) == record


def _mtime(path: epath.Path) -> float:
  # epath's local stat looks up the owner's name, which fails for a uid without a passwd entry
  return path.stat().mtime if paths.is_url(path) else os.path.getmtime(path)


def _take_over_if_stale(path: epath.Path, stale_seconds: float) -> None:
  """Removes a lock of a dead run (with a warning); raises if its run may be alive."""
  try:
    mtime = _mtime(path)
  except FileNotFoundError:
    return
  found = _read(path)
  reason = stale_reason(found, mtime, time.time(), stale_seconds)
  if reason is None:
    holder = (f"process {found.get('pid')} on {found.get('host')}, started "
              f"{time.ctime(found.get('started', mtime))}" if found else "a run")
    raise WorkdirLockedError(
        f"workdir {path.parent} is in use by {holder} (lock {path}). Wait for that "
        "run, stop it, or give another --workdir. If no such run exists (e.g. it was killed on "
        f"another host), the lock is taken over once its heartbeat is {stale_seconds:.0f} s "
        "old, or delete the lock file")
  # Renamed aside rather than deleted: of two runs taking over at once, only one renames the
  # stale file; the other finds the fresh lock and puts it back.
  aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
  try:
    path.rename(aside)
  except FileNotFoundError:
    return
  if _read(aside) != found:
    aside.replace(path)
    return
  aside.unlink()
  log.warning("took over the workdir lock %s of a run that is gone (%s)", path, reason)
