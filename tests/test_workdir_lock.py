"""One run per workdir (issue 15, item 3): a live holder is refused, a dead one taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bmd_jax import train, workdir_lock


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
