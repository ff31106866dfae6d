"""One run per workdir, for the run's whole life: a lock file that process 0 holds while a run
trains.

Two runs sharing a workdir write every metric twice and the same checkpoint steps twice (or
the second dies in Orbax). ``<workdir>/run.lock`` is created atomically (O_EXCL) by process 0 of
a run; the other processes of a multi-host run share it through process 0. It records the
holder's run id (fresh for each run unless given), host, process id and a heartbeat time that a
thread refreshes every HEARTBEAT_SECONDS / 2. A found lock is taken over, with a warning, when
its run is gone:

- its heartbeat is older than STALE_SECONDS, whatever its pid says (pids are reused, e.g. after
  a container restart);
- on the same host, its process no longer exists, or it names this process's pid without being
  one of this process's locks (an earlier process that had the same pid);
- it carries the run id the new run was given: a run never refuses itself.

The heartbeat thread also checks that the run still owns the workdir. When the lock or the
workdir disappears, or the lock names another run, the run must stop within one heartbeat
interval rather than carry on writing into nothing (or over another run): the thread records
the loss, `WorkdirLock.check()` (cheap: no file access) raises WorkdirLostError in the training
loop, and the thread also interrupts the main thread (see _interrupt_main).

A URL workdir (gs://...) has no atomic create-if-absent through epath: the lock is written when
absent and read back, so two runs starting within the same moment may both believe they hold
it; the loser's heartbeat then finds the lock names another run, and the loser stops.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from bmd_jax.infra import paths

log = logging.getLogger("bmd_jax")

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats
# Sent by the heartbeat thread to the main thread when the workdir is lost (see _interrupt_main).
LOST_SIGNAL = signal.SIGUSR1


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLostError(RuntimeError):
  """This run no longer owns its workdir: deleted, its lock deleted, or taken by another run."""


# The locks this process holds, by run id: a found lock with one of these ids is alive here.
_held: dict[str, "WorkdirLock"] = {}
_held_guard = threading.Lock()


@dataclasses.dataclass
class WorkdirLock:
  """A held lock (or, on processes other than 0, a stand-in that holds nothing)."""

  path: epath.Path | None
  record: dict | None = None
  heartbeat_seconds: float = HEARTBEAT_SECONDS
  stale_seconds: float = STALE_SECONDS
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: threading.Thread | None = None
  _lost: str | None = None  # set once by the heartbeat thread; read by check()
  _reported: bool = False  # a WorkdirLostError was raised: the signal's handler raises no other
  # The local workdir, held open: its inode cannot be reused while held, so a workdir deleted
  # and made again (by a write under way, an asynchronous checkpoint's) is told from its own.
  _folder: int | None = None

  def check(self) -> None:
    """Raises WorkdirLostError once the heartbeat thread found the workdir lost. No file access:
    the training loop calls it at every step."""
    if self._lost is not None:
      self._reported = True
      raise WorkdirLostError(self._lost)

  def _beat(self) -> None:
    refreshed = time.time()
    # Every half interval, so that a loss is seen, and the run stopped, within one interval.
    while not self._stop.wait(self.heartbeat_seconds / 2):
      lost = _ownership_lost(self)
      if lost is None:
        try:
          heartbeat = time.time()
          _write_atomically(self.path, {**self.record, "heartbeat": heartbeat})
          self.record, refreshed = {**self.record, "heartbeat": heartbeat}, heartbeat
          continue
        except FileNotFoundError:
          lost = _ownership_lost(self) or (
              "its lock could not be written", _RESUME)
        except OSError as e:  # a full disk, a network blip: passing, unless it lasts
          lost = self._unrefreshed(refreshed, e)
      if lost is not None:
        self._lose(lost)
        return

  def _unrefreshed(self, refreshed: float, error: OSError) -> tuple[str, str] | None:
    """A loss once the heartbeat has failed for so long that another run may take over."""
    age = time.time() - refreshed
    if age <= self.stale_seconds:
      log.warning("could not refresh the workdir lock %s (%s); trying again", self.path, error)
      return None
    return (f"its lock {self.path.name} could not be refreshed for {age:.0f} s ({error}), long "
            "enough for another run to take it over",
            "Check its file system, then run the same command to resume")

  def _lose(self, lost: tuple[str, str]) -> None:
    what, fix = lost
    # Not logged here: the error reaches the command line's error boundary, which prints it.
    self._lost = (f"workdir {self.path.parent}: {what}, so this run stopped rather than write "
                  f"into a folder it no longer owns. {fix}")
    if not self._stop.is_set():
      _interrupt_main()

  def start_heartbeat(self) -> None:
    if self.path is not None:
      self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
      self._thread.start()

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this run's; then raises
    WorkdirLostError if the workdir was lost, so a run never ends "successfully" without it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.path is None:
      return
    self._reported = True  # the check below says it; no exception from the handler on top
    _forget(self)
    if self._folder is not None:
      os.close(self._folder)
      self._folder = None
    if self._lost is None and _read(self.path) == self.record:
      self.path.unlink()
    self.check()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    try:
      self.release()
    except WorkdirLostError:
      if exc_type is None:  # else the error in flight (often this one, from check()) says it
        raise


_RESUME = "If no other run uses it, run the same command to resume from its newest checkpoint"


def _ownership_lost(lock: WorkdirLock) -> tuple[str, str] | None:
  """(what took the workdir from `lock`'s run, what to do), or None while the run still holds
  it."""
  path = lock.path
  try:
    found = json.loads(path.read_text())
  except FileNotFoundError:
    if lock._folder is not None and not _same_folder(lock._folder, path.parent):
      return ("it was deleted while this run was training",
              "Run the command again: it resumes from a checkpoint that survived, if any, or "
              "starts over")
    return f"its lock {path.name} was deleted while this run was training", _RESUME
  except ValueError:
    return f"its lock {path.name} was replaced by an unreadable file", _RESUME
  except OSError:
    return None  # unreadable for now: the write that follows says whether it lasts
  if found.get("run_id") != lock.record["run_id"]:
    return (f"it was taken over by {_holder(found)}",
            "Let that run finish, or stop it and run the same command to resume")
  return None


def _same_folder(descriptor: int, folder: epath.Path) -> bool:
  """Whether `folder` is still the folder open as `descriptor`."""
  try:
    now = os.stat(folder)
  except FileNotFoundError:
    return False
  held = os.fstat(descriptor)
  return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _holder(record: dict) -> str:
  return (f"run {record.get('run_id', '(no id)')} (process {record.get('pid')} on "
          f"{record.get('host')})")


def _interrupt_main() -> None:
  """Raises WorkdirLostError in the main thread through LOST_SIGNAL's handler.

  check() alone reaches the loop only between steps; an evaluation, a wait for a save or a
  stalled input pipeline can keep the main thread away from it for minutes, writing all the
  while. A signal sent to the main thread interrupts its sleeps and waits and runs the handler
  at its next Python instruction (a computation inside XLA still runs to its end: then check()
  is as quick). The exception arrives wherever the main thread is, as Ctrl-C's
  KeyboardInterrupt does, which the loop already survives. The handler raises only for a lock
  it knows lost, and passes any other LOST_SIGNAL to the handler it replaced (a scheduler's
  warning signal, say), so installing it changes nothing else, except for a handler installed
  outside Python's signal module (faulthandler.register): Python cannot see one, and it is
  replaced while the lock is held.
  """
  with _held_guard:
    if _Handler.installed:  # else (acquired off the main thread) the signal would end the process
      _Handler.sent += 1
      signal.pthread_kill(threading.main_thread().ident, LOST_SIGNAL)


class _Handler:
  """LOST_SIGNAL's handler while this process holds a lock (installed from the main thread)."""

  previous = None  # the handler it replaced, while installed
  installed = False
  sent = handled = 0  # signals sent by the heartbeat threads, and those handled as theirs

  @classmethod
  def handle(cls, signum, frame):
    if cls.handled < cls.sent:  # ours: raised once, for a loss not reported yet
      cls.handled += 1
      for lock in list(_held.values()):
        if lock._lost is not None and not lock._reported:  # pylint: disable=protected-access
          lock.check()
      return
    previous = cls.previous
    if callable(previous):
      previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default: what the signal did before, end the process
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)


def _remember(lock: WorkdirLock) -> None:
  with _held_guard:
    _held[lock.record["run_id"]] = lock
    in_main = threading.current_thread() is threading.main_thread()
    # None: a handler that Python did not install, and that signal.signal could not restore
    if in_main and not _Handler.installed and signal.getsignal(LOST_SIGNAL) is not None:
      _Handler.previous = signal.signal(LOST_SIGNAL, _Handler.handle)
      _Handler.installed = True


def _forget(lock: WorkdirLock) -> None:
  with _held_guard:
    _held.pop(lock.record["run_id"], None)
    in_main = threading.current_thread() is threading.main_thread()
    if not _held and _Handler.installed and in_main:
      signal.signal(LOST_SIGNAL, _Handler.previous)
      _Handler.installed, _Handler.previous = False, None


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
                 stale_seconds: float = STALE_SECONDS, run_id: str | None = None) -> str | None:
  """Why a found lock may be taken over (its run is gone, or it is the run `run_id`'s own), or
  None while its run may be alive."""
  if record is None:  # unreadable: a holder killed while writing it, judged by the file's age
    age = now - mtime
    return f"unreadable, {age:.0f} s old" if age > stale_seconds else None
  found_id = record.get("run_id")
  if found_id is not None and found_id == run_id and found_id not in _held:
    return f"it is this run's own (run id {run_id})"
  age = now - float(record.get("heartbeat", mtime))
  if age > stale_seconds:  # whatever its pid says: pids are reused
    return f"its heartbeat stopped {age:.0f} s ago"
  pid = record.get("pid")
  if record.get("host") == socket.gethostname() and isinstance(pid, int):
    if pid == os.getpid() and found_id not in _held:
      return f"it names process {pid}, this one, which does not hold it (an earlier process " \
             "had the same pid)"
    if not _pid_alive(pid):
      return f"process {pid} on {record['host']} no longer exists"
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


def acquire(workdir: paths.PathLike, stale_seconds: float | None = None,
            heartbeat_seconds: float | None = None, run_id: str | None = None) -> WorkdirLock:
  """Takes the workdir's lock (process 0), or raises WorkdirLockedError naming its holder.
  Every process of a multi-host run learns process 0's outcome, so none trains alone.

  `run_id` names the run in the lock (a fresh one by default); a lock carrying it is taken
  over. STALE_SECONDS and HEARTBEAT_SECONDS are read here, so a test may shorten them.
  """
  path = check_workdir(workdir) / LOCK_NAME
  lock, error = WorkdirLock(None), None
  if jax.process_index() == 0:
    try:
      lock = _acquire_here(path, stale_seconds or STALE_SECONDS,
                           heartbeat_seconds or HEARTBEAT_SECONDS, run_id or uuid.uuid4().hex)
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


def _acquire_here(path: epath.Path, stale_seconds: float, heartbeat_seconds: float,
                  run_id: str) -> WorkdirLock:
  now = time.time()
  record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": now,
            "heartbeat": now}
  for _ in range(3):  # a lock that vanishes between our checks is tried again
    if _create(path, record):
      lock = WorkdirLock(path, record, heartbeat_seconds, stale_seconds,
                         _folder=None if paths.is_url(path) else os.open(path.parent, os.O_RDONLY))
      _remember(lock)
      lock.start_heartbeat()
      return lock
    _take_over_if_stale(path, stale_seconds, run_id)
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


def _take_over_if_stale(path: epath.Path, stale_seconds: float, run_id: str) -> None:
  """Removes a lock of a dead run (with a warning); raises if its run may be alive."""
  try:
    mtime = _mtime(path)
  except FileNotFoundError:
    return
  found = _read(path)
  now = time.time()
  reason = stale_reason(found, mtime, now, stale_seconds, run_id)
  if reason is None:
    raise WorkdirLockedError(_in_use(path, found, now - mtime, stale_seconds))
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


def _in_use(path: epath.Path, found: dict | None, file_age: float, stale_seconds: float) -> str:
  """The refusal: who holds the workdir and what to do. Never "delete the lock": a live run
  whose lock is deleted stops at its next heartbeat, losing the steps since its checkpoint."""
  if found is None:
    holder = f"a run whose lock is unreadable ({file_age:.0f} s old)"
  else:
    beat = time.time() - float(found.get("heartbeat", time.time() - file_age))
    holder = (f"{_holder(found)}, started {time.ctime(found.get('started', 0))}, last "
              f"heartbeat {beat:.0f} s ago")
  return (f"workdir {path.parent} is in use by {holder} (lock {path.name}). Wait for that run, "
          "stop it, or give another --workdir; if that run is gone, its lock is taken over "
          f"once its heartbeat is {stale_seconds:.0f} s old")
