"""A run owns its workdir for its whole life (issue 29, item 2), through the command line: a
workdir or lock deleted mid-run stops the run within one heartbeat interval, non-zero."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from bmd_jax.infra import cli
from bmd_jax.training import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT = 2.0

# The command line with a short heartbeat (acquire reads HEARTBEAT_SECONDS when called).
_MAIN = f"""
import runpy, sys
from bmd_jax.training import workdir_lock
workdir_lock.HEARTBEAT_SECONDS = {HEARTBEAT}
sys.argv = ["main"] + sys.argv[1:]
runpy.run_module("bmd_jax.main", run_name="__main__")
"""


def _start(workdir):
  return subprocess.Popen(
      [sys.executable, "-c", _MAIN, "--config=configs/default.py", f"--workdir={workdir}",
       "--config.num_train_steps=3000", "--config.log_every_steps=5",
       "--config.eval_every_epochs=100"],
      cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, text=True, stderr=subprocess.PIPE)


def _read_until(run, text, lines):
  for line in run.stderr:
    lines.append(line)
    if text in line:
      return time.time()
  raise AssertionError(f"no {text!r} in:\n" + "".join(lines[-30:]))


def _stopped(run, lines, timeout=120):
  try:
    lines += run.stderr.readlines()
    return run.wait(timeout)
  finally:
    run.kill()
    run.wait()


@pytest.mark.slow
def test_a_workdir_deleted_mid_run_stops_it_within_one_heartbeat(tmp_path):
  workdir, lines = tmp_path / "run", []
  run = _start(workdir)
  _read_until(run, "step 60/", lines)
  shutil.rmtree(workdir)
  deleted = time.time()
  said = _read_until(run, "was deleted", lines)
  assert said - deleted < HEARTBEAT, "".join(lines[-20:])
  assert _stopped(run, lines) != 0
  line = [l for l in lines if "this run stopped" in l][-1]
  assert "was deleted" in line and str(workdir) in line and "Run the command again" in line
  _one_line_once_wired(lines)
  assert "finished" not in "".join(lines)


def _one_line_once_wired(lines):
  # Until main's error boundary lists WorkdirLostError, the error keeps its traceback.
  if "bmd_jax.training.workdir_lock.WorkdirLostError" in cli.USER_ERRORS:
    assert "Traceback" not in "".join(lines), "".join(lines[-30:])


@pytest.mark.slow
def test_a_lock_deleted_and_a_second_run_stops_the_first(tmp_path):
  first_lines, second_lines = [], []
  first = _start(tmp_path)
  try:
    _read_until(first, "step 20/", first_lines)
    os.remove(tmp_path / workdir_lock.LOCK_NAME)
    second = _start(tmp_path)
    try:
      _read_until(first, "this run stopped", first_lines)
      assert _stopped(first, first_lines) != 0
      line = [l for l in first_lines if "this run stopped" in l][-1]
      assert "lock run.lock was deleted" in line or "taken over" in line
      _one_line_once_wired(first_lines)
      _read_until(second, "/3000 (", second_lines)  # the second one trains on alone
    finally:
      second.kill()
      second.wait()
  finally:
    first.kill()
    first.wait()
