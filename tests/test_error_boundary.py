"""One error boundary (issue 29, item 5): each user error, met through the command line, is a
short message without a traceback and with its exit status; a bug keeps its traceback, also
written to the workdir's error.log."""

import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from bmd_jax.infra import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = ["-m", "bmd_jax.main", "--config=configs/default.py"]


def _run(args, timeout=180, code=None):
  command = [sys.executable, *(["-c", code] if code else []), *args]
  return subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                        capture_output=True, text=True, timeout=timeout)


# The loop's progress lines and Orbax's own error logs, which a stop or a failed save may add
# before the one line that matters.
_PROGRESS = re.compile(r"^(\d\d:\d\d:\d\d |[EW]\d{4} )")


def _without_progress(result):
  said = "\n".join(l for l in result.stderr.splitlines() if not _PROGRESS.match(l))
  return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, said)


def _short(result, status):
  """The one line of stderr that says what happened (at most 3 lines in all)."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert 1 <= len(lines) <= 3, result.stderr[-3000:]
  return lines[-1]


@pytest.mark.parametrize("value", [0, -8])
def test_a_non_positive_batch_size_is_one_line(tmp_path, value):
  line = _short(_run([*MAIN, f"--workdir={tmp_path}", f"--config.batch_size={value}"]), 1)
  assert f"config.batch_size={value}" in line and "positive" in line


def test_a_config_file_that_does_not_parse_names_its_file_and_line(tmp_path):
  config = tmp_path / "broken.py"
  config.write_text('"""A config."""\n\ndef get_config(:\n  pass\n')
  line = _short(_run(["-m", "bmd_jax.main", f"--config={config}", f"--workdir={tmp_path}"]), 2)
  assert str(config) in line and "line 3" in line


def test_a_bad_flag_exits_2_in_one_line(tmp_path):
  line = _short(_run([*MAIN, f"--wrokdir={tmp_path}"]), 2)
  assert "wrokdir" in line


def test_a_missing_workdir_flag_is_one_line():
  line = _short(_run(MAIN), 2)
  assert "--workdir is required" in line


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_cloud_workdir_without_its_package_names_the_package():
  line = _short(_run([*MAIN, "--workdir=gs://bucket/run"]), 1)
  assert "gs://bucket/run" in line and "pip install gcsfs" in line


@pytest.mark.parametrize("layout", ["missing", "no_images"])
def test_an_image_folder_error_is_one_line(tmp_path, layout):
  root = tmp_path / "images"
  if layout == "no_images":  # the class folder holding only non-images
    for split in ("train", "val"):
      (root / split / "a").mkdir(parents=True)
      (root / split / "a" / "notes.txt").write_text("not an image")
  line = _short(_run([*MAIN, f"--workdir={tmp_path / 'run'}", "--config.dataset=image_folder",
                      f"--config.data_dir={root}"]), 1)
  assert str(root) in line


def test_summary_of_a_config_file_that_does_not_parse_is_one_line(tmp_path):
  config = tmp_path / "broken.py"
  config.write_text("def get_config(:\n")
  line = _short(_run(["-m", "bmd_jax.tools.summary", f"--config={config}"]), 2)
  assert str(config) in line and "line 1" in line


# python -m bmd_jax.tools.convert with PyTorch absent, as on a machine without the [convert] extra.
_NO_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = ["convert", *sys.argv[1:]]
runpy.run_module("bmd_jax.tools.convert", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("content, said", [
    (b"not a zip", "cannot be read"),  # a damaged file
    (None, "pip install"),  # a .pth without PyTorch
    (b"npz of another network", "irnet_resnet20")])
def test_convert_of_a_bad_state_dict_is_one_line(tmp_path, content, said):
  import numpy as np  # pylint: disable=g-import-not-at-top

  path = tmp_path / ("model.pth" if content is None else "model.npz")
  if content == b"npz of another network":
    np.savez(path, **{"fc.weight": np.zeros((10, 64), np.float32)})
  elif content is not None:
    path.write_bytes(content)
  args = ["--from=irnet_resnet20", f"--state_dict={path}", f"--out={tmp_path / 'out'}"]
  result = _run(args, code=_NO_TORCH) if content is None else _run(
      ["-m", "bmd_jax.tools.convert", *args])
  line = _short(result, 1)
  assert said in line, line


def test_the_headline_command_without_imagenet_is_one_line(tmp_path):
  line = _short(_run(["-m", "bmd_jax.main", "--config=configs/imagenet.py",
                      f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tmp_path}"]), 1)
  assert "imagenet2012" in line and "not prepared" in line


# Runs a module with every write under argv[1] refused as a read-only file system does (the
# tests run as any user, so a real read-only mount is not at hand).
_READ_ONLY = """
import errno, os, runpy, sys
root = os.path.abspath(sys.argv.pop(1))
def refuse(original):
  def call(path, *args, **kwargs):
    if os.path.abspath(os.fspath(path)).startswith(root):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
    return original(path, *args, **kwargs)
  return call
os.mkdir, os.open = refuse(os.mkdir), refuse(os.open)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("exists", [True, False], ids=["resume", "new_run"])
def test_a_read_only_workdir_is_one_line(tmp_path, exists):
  workdir = tmp_path / "run"
  if exists:
    workdir.mkdir()
  result = _run([str(tmp_path), "bmd_jax.main", "--config=configs/default.py",
                 f"--workdir={workdir}"], code=_READ_ONLY)
  line = _short(result, 1)
  assert "Read-only file system" in line and str(workdir) in line and "writable" in line


def test_analyze_of_a_read_only_workdir_is_one_line(tmp_path):
  result = _run([str(tmp_path), "bmd_jax.tools.analyze", f"--workdir={tmp_path}"], code=_READ_ONLY)
  line = _short(result, 1)
  assert f"{tmp_path}/analysis" in line and "--out" in line


@pytest.mark.slow
def test_export_to_a_read_only_folder_is_one_line(digits_run, tmp_path):
  out = tmp_path / "exports" / "model.npz"
  result = _run([str(tmp_path / "exports"), "bmd_jax.tools.export", f"--workdir={digits_run[1]}",
                 f"--out={out}"], code=_READ_ONLY, timeout=300)
  line = _short(result, 1)
  assert str(tmp_path / "exports") in line and "Read-only file system" in line


def test_analyze_takes_a_workdir_with_a_comma_whole(tmp_path):
  workdir = tmp_path / "lr=0.005,bs=64"
  workdir.mkdir()
  line = _short(_run(["-m", "bmd_jax.tools.analyze", f"--workdir={workdir}"]), 1)
  assert str(workdir) in line  # named whole: no checkpoint there, not two missing folders


@pytest.mark.slow
def test_analyze_compares_workdirs_given_by_a_repeated_flag(digits_run, tmp_path):
  with_comma = tmp_path / "lr=0.005,bs=64"
  shutil.copytree(digits_run[1], with_comma)
  result = _run(["-m", "bmd_jax.tools.analyze", f"--workdir={digits_run[1]}",
                 f"--workdir={with_comma}", "--labels=first,second", f"--out={tmp_path / 'cmp'}"],
                timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / "cmp" / "analysis.json").read_text())
  assert record["runs"]["second"]["workdir"] == str(with_comma)


def test_analyze_of_several_workdirs_without_out_is_a_usage_error(tmp_path):
  line = _short(_run(["-m", "bmd_jax.tools.analyze", f"--workdir={tmp_path}/a,1",
                      f"--workdir={tmp_path}/b"]), 2)
  assert "--out" in line


@pytest.mark.slow
def test_analyze_of_damaged_checkpoints_is_one_line(digits_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(digits_run[1], workdir)
  for folder, _, files in os.walk(workdir / "checkpoints"):
    for name in files:  # every array file of every checkpoint cut short
      if "ocdbt" in folder and os.path.getsize(os.path.join(folder, name)) > 1024:
        os.truncate(os.path.join(folder, name), 100)
  line = _short(_run(["-m", "bmd_jax.tools.analyze", f"--workdir={workdir}"], timeout=300), 1)
  assert str(workdir / "checkpoints") in line


def test_a_bug_keeps_its_traceback_and_logs_it_in_the_workdir(tmp_path):
  bug = ("import runpy, sys\nfrom bmd_jax.training import train\n"
         "def broken(config, workdir):\n  raise TypeError('a bug')\n"
         "train.train_and_evaluate = broken\nsys.argv = ['main', *sys.argv[1:]]\n"
         "runpy.run_module('bmd_jax.main', run_name='__main__')\n")
  result = _run(["--config=configs/default.py", f"--workdir={tmp_path}"], code=bug)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" in result.stderr and "TypeError: a bug" in result.stderr
  log = (tmp_path / "error.log").read_text()
  assert "Traceback" in log and "TypeError: a bug" in log
  assert str(tmp_path / "error.log") in result.stderr.strip().splitlines()[-1]


def test_a_user_error_names_the_log_holding_its_traceback(tmp_path):
  line = _short(_run([*MAIN, f"--workdir={tmp_path}", "--config.batch_size=0"]), 1)
  assert str(tmp_path / "error.log") in line
  assert "ConfigValueError" in (tmp_path / "error.log").read_text()


def test_every_registered_name_is_an_exception_class():
  for name in cli.USER_ERRORS | set(cli.STOPS):
    module, _, cls = name.rpartition(".")
    found = getattr(importlib.import_module(module), cls, None)
    assert isinstance(found, type) and issubclass(found, BaseException), name


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, terminal", [
    (signal.SIGINT, cli.EXIT_INTERRUPTED, False), (signal.SIGTERM, cli.EXIT_PREEMPTED, False),
    (signal.SIGINT, cli.EXIT_INTERRUPTED, True)], ids=["sigint", "sigterm", "terminal_ctrl_c"])
def test_a_stop_says_in_one_line_what_was_kept(tmp_path, sig, status, terminal):
  # A terminal's Ctrl-C reaches the whole process group: grain's workers too.
  command = [sys.executable, *MAIN, f"--workdir={tmp_path}", "--config.num_train_steps=3000",
             "--config.log_every_steps=5", "--config.checkpoint_every_steps=10",
             "--config.eval_every_epochs=100", f"--config.num_workers={2 if terminal else 0}"]
  proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  for line in proc.stderr:  # the progress lines, until a checkpoint is surely complete
    if "step 30/" in line:
      break
  if terminal:
    os.killpg(proc.pid, sig)
  else:
    proc.send_signal(sig)
  rest = proc.stderr.read()
  proc.wait(timeout=120)
  line = _short(_without_progress(subprocess.CompletedProcess(command, proc.returncode, "",
                                                              rest)), status)
  assert "kept" in line or "saved at step" in line, rest


# Orbax's next save raises the failure of the one before: TensorStore's ValueError, as a real
# full disk (a tmpfs) makes it.
_TENSORSTORE_FULL = """
import runpy, sys
import orbax.checkpoint as ocp
original = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
  if step >= 10:
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.bias/0" in OCDBT database at '
                     f'local file "{self.directory}/5.orbax-checkpoint-tmp/state/": Failed to '
                     "write 174042 bytes to file 18: No space left on device "
                     "[os_error_code='28']")
  return original(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
sys.argv = ["main", *sys.argv[1:]]
runpy.run_module("bmd_jax.main", run_name="__main__")
"""


@pytest.mark.slow
def test_a_full_disk_seen_by_tensorstore_is_one_line(tmp_path):
  result = _run(["--config=configs/default.py", f"--workdir={tmp_path}",
                 "--config.num_train_steps=20", "--config.checkpoint_every_steps=5",
                 "--config.log_every_steps=5", "--config.eval_every_epochs=100"],
                code=_TENSORSTORE_FULL, timeout=300)
  line = _short(_without_progress(result), 1)
  assert "disk is full" in line and "5.orbax-checkpoint-tmp" in line, line


@pytest.mark.parametrize("given", ["--config.optimizer=adagrad", "--config.lr_schedule=step",
                                   "--config.stages=step9", "--config.augment=mixup"])
def test_a_config_value_nothing_can_run_with_is_one_line(tmp_path, given):
  result = _run([*MAIN, f"--workdir={tmp_path / 'run'}", given, "--config.num_train_steps=2"])
  line = _short(result, 1)
  assert given.split("=")[1] in line, line
