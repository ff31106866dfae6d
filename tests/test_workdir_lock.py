"""One run per workdir (issue 15, item 3): a live holder is refused, a dead one taken over."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from bmd_jax.training import train, workdir_lock
from test_cloud_paths import FakeGcs, gcs  # noqa: F401  (the gs:// stand-in and its fixture)


def _write_lock(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  base = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
          "heartbeat": time.time()}
  with open(path, "w") as f:
    json.dump({**base, **record}, f)
  return path


@pytest.fixture
def live_pid():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  yield proc.pid
  proc.kill()
  proc.wait()


@pytest.fixture
def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_second_run_is_refused_naming_the_holder(tmp_path, live_pid, digits_config):
  _write_lock(tmp_path, pid=live_pid)
  with pytest.raises(workdir_lock.WorkdirLockedError) as error:
    train.train_and_evaluate(digits_config, str(tmp_path))
  assert str(live_pid) in str(error.value) and "--workdir" in str(error.value)
  assert not os.path.exists(tmp_path / "metrics.jsonl")  # nothing written


def test_the_same_process_cannot_take_it_twice(tmp_path):
  with workdir_lock.acquire(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirLockedError):
      workdir_lock.acquire(str(tmp_path))
  with workdir_lock.acquire(str(tmp_path)):  # released: free again
    pass
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_NAME)


def test_a_lock_of_a_killed_process_is_taken_over(tmp_path, dead_pid, caplog):
  _write_lock(tmp_path, pid=dead_pid)
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.record["pid"] == os.getpid()
  assert f"process {dead_pid}" in caplog.text and "took over" in caplog.text


def test_another_hosts_lock_is_judged_by_its_heartbeat(tmp_path, caplog):
  _write_lock(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 5)
  with pytest.raises(workdir_lock.WorkdirLockedError, match="elsewhere"):
    workdir_lock.acquire(str(tmp_path), stale_seconds=60)
  _write_lock(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 120)
  with workdir_lock.acquire(str(tmp_path), stale_seconds=60):
    pass
  assert "heartbeat stopped" in caplog.text


def test_the_heartbeat_advances(tmp_path):
  with workdir_lock.acquire(str(tmp_path), heartbeat_seconds=0.05) as lock:
    first = lock.record["heartbeat"]
    time.sleep(0.4)
    on_disk = json.load(open(tmp_path / workdir_lock.LOCK_NAME))
    assert on_disk["heartbeat"] > first


def test_a_workdir_that_is_a_file_is_named(tmp_path, digits_config):
  path = tmp_path / "a_file"
  path.write_text("")
  for workdir in (path, path / "run"):
    with pytest.raises(NotADirectoryError, match="is a file"):
      train.train_and_evaluate(digits_config, str(workdir))


# --- issue 29, item 2: a run owns its workdir for its whole life -----------------------------

def test_a_live_pid_with_an_hour_old_heartbeat_is_taken_over(tmp_path, live_pid, caplog):
  # pids are reused (a restarted container): a heartbeat that stopped wins over a live pid
  _write_lock(tmp_path, pid=live_pid, heartbeat=time.time() - 3600)
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.record["pid"] == os.getpid()
  assert "heartbeat stopped" in caplog.text


def test_this_process_pid_left_by_an_earlier_process_is_taken_over(tmp_path, caplog):
  # After a container restart the new run may get the pid its killed predecessor had.
  _write_lock(tmp_path, pid=os.getpid(), run_id="an-earlier-process")
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.record["run_id"] != "an-earlier-process"
  assert "took over" in caplog.text


def test_a_run_never_refuses_its_own_run_id(tmp_path, live_pid):
  _write_lock(tmp_path, pid=live_pid, run_id="job-42")
  with workdir_lock.acquire(str(tmp_path), run_id="job-42") as lock:
    assert lock.record["run_id"] == "job-42" and lock.record["pid"] == os.getpid()


def test_the_refusal_never_advises_deleting_the_lock(tmp_path, live_pid):
  _write_lock(tmp_path, pid=live_pid, run_id="the-other-run")
  with pytest.raises(workdir_lock.WorkdirLockedError) as error:
    workdir_lock.acquire(str(tmp_path))
  message = str(error.value)
  assert "delete" not in message.lower() and "\n" not in message
  assert "the-other-run" in message and "300 s" in message


def _lost_within(lock, seconds):
  """The WorkdirLostError that lock.check() (or the signal to the main thread) raises within
  `seconds`."""
  deadline = time.time() + seconds
  try:
    while time.time() < deadline:
      lock.check()
      time.sleep(0.01)
  except workdir_lock.WorkdirLostError as error:
    return error
  raise AssertionError(f"the loss was not noticed within {seconds} s")


def _vanish(how, workdir):
  """The lock disappears, or the whole workdir, or another run writes its own lock."""
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  if how == "lock deleted":
    os.remove(path)
  elif how == "workdir deleted":
    shutil.rmtree(workdir)
  elif how == "workdir deleted and made again":  # by a write under way, a checkpoint's
    shutil.rmtree(workdir)
    os.makedirs(os.path.join(workdir, "checkpoints"))
  else:
    _write_lock(workdir, pid=12345, run_id="another-run")


@pytest.mark.parametrize("how, said", [
    ("lock deleted", "lock run.lock was deleted"),
    ("workdir deleted", "it was deleted"),
    ("workdir deleted and made again", "it was deleted"),
    ("taken over", "taken over by run another-run")])
def test_a_lost_workdir_is_raised_by_check_within_one_heartbeat(tmp_path, how, said):
  workdir = str(tmp_path / "run")
  lock = workdir_lock.acquire(workdir, heartbeat_seconds=0.2)
  try:
    lock.check()  # held: nothing to say
    _vanish(how, workdir)
    started = time.time()
    error = _lost_within(lock, 0.2 + 0.15)  # one interval, and some slack for the thread
    assert isinstance(error, RuntimeError) and time.time() - started < 0.35
    message = str(error)
    assert workdir in message and said in message and "\n" not in message
    with pytest.raises(workdir_lock.WorkdirLostError):
      lock.check()  # it stays lost
  finally:
    try:
      lock.release()
    except workdir_lock.WorkdirLostError:
      pass
  if how == "taken over":  # another run's lock is not ours to remove
    assert json.load(open(os.path.join(workdir, workdir_lock.LOCK_NAME)))["run_id"] == (
        "another-run")
  if how == "workdir deleted":
    assert not os.path.exists(workdir)  # nothing made it again


def test_check_reads_no_file(tmp_path, monkeypatch):
  lock = workdir_lock.acquire(str(tmp_path), heartbeat_seconds=60)
  calls = []
  monkeypatch.setattr(workdir_lock.os, "stat", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(workdir_lock, "_read", lambda *a, **k: calls.append(a))
  for _ in range(1000):
    lock.check()
  monkeypatch.undo()
  lock.release()
  assert not calls


def test_the_main_thread_is_interrupted_while_it_waits(tmp_path):
  # The loop may sit in something long (an evaluation, a wait for a save) between checks.
  workdir = str(tmp_path / "run")
  before = signal.getsignal(signal.SIGUSR1)
  lock = workdir_lock.acquire(workdir, heartbeat_seconds=0.2)
  started = time.time()
  with pytest.raises(workdir_lock.WorkdirLostError, match="deleted"):
    shutil.rmtree(workdir)
    time.sleep(10)
  assert time.time() - started < 2
  with pytest.raises(workdir_lock.WorkdirLostError):
    lock.release()  # a with-block that ended normally still says so: __exit__ checks
  assert signal.getsignal(signal.SIGUSR1) == before


def test_a_sigusr1_that_is_not_ours_reaches_the_previous_handler(tmp_path):
  received = []
  previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
  try:
    with workdir_lock.acquire(str(tmp_path), heartbeat_seconds=60):
      os.kill(os.getpid(), signal.SIGUSR1)
      time.sleep(0.05)
    assert received == [signal.SIGUSR1]
  finally:
    signal.signal(signal.SIGUSR1, previous)


def test_a_lock_that_cannot_be_refreshed_for_the_stale_time_is_lost(tmp_path, monkeypatch):
  # e.g. a full disk or an unreachable bucket: another run may take over once it is stale
  lock = workdir_lock.acquire(str(tmp_path), heartbeat_seconds=0.1, stale_seconds=0.5)
  def unwritable(path, record):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(workdir_lock, "_write_atomically", unwritable)
  time.sleep(0.25)
  lock.check()  # a passing failure is not a loss
  error = _lost_within(lock, 1.0)
  assert "No space left" in str(error) and "could not be refreshed" in str(error)
  with pytest.raises(workdir_lock.WorkdirLostError):
    lock.release()


def test_a_url_lock_deleted_is_noticed(gcs):  # noqa: F811
  lock = workdir_lock.acquire("gs://b/w", heartbeat_seconds=0.2)
  gcs.rm("gs://b/w/run.lock")
  error = _lost_within(lock, 0.35)
  assert "gs://b/w" in str(error) and "lock run.lock was deleted" in str(error)
  with pytest.raises(workdir_lock.WorkdirLostError):
    lock.release()
  assert not gcs.exists("gs://b/w/run.lock")  # the heartbeat did not write it back
