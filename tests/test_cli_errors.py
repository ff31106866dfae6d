"""The unclear cases of issue 15: each a message naming the problem and the fix."""

import os
import subprocess
import sys

import pytest

from bmd_jax.tools import export
from bmd_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  return {**os.environ, "PYTHONPATH": REPO}


@pytest.mark.slow
@pytest.mark.parametrize("given, fix", [
    ("--config.not_a_key=1", "Check its spelling"),
    ("--config.loss.kurtosis_weight=0", "--config.loss.kurtosis.weight")])  # the old layout
def test_unknown_config_key_is_one_line_without_a_traceback(tmp_path, given, fix):
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
       f"--workdir={tmp_path}", given],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert given in result.stderr and "no field" in result.stderr and fix in result.stderr


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("batch_size", -8),
                                          ("checkpoint_keep", 0)])
def test_a_non_positive_count_is_named(digits_config, tmp_path, field, value):
  setattr(digits_config, field, value)
  with pytest.raises(ValueError, match=f"config.{field}={value}.*positive"):
    train.train_and_evaluate(digits_config, str(tmp_path))


def test_export_out_under_a_file_is_named_before_any_work(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(NotADirectoryError, match="is a file"):
    export.export(str(tmp_path / "no_such_workdir"), str(blocker / "model.npz"))


def test_init_from_errors_do_not_call_it_a_teacher(digits_config, tmp_path):
  import numpy as np
  import orbax.checkpoint as ocp

  other = str(tmp_path / "other_model" / "1" / "state")  # a checkpoint of another model
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(other, {"params": {"x": np.zeros(3, np.float32)}})
  checkpointer.wait_until_finished()  # the save is asynchronous
  digits_config.init_from = str(tmp_path / "other_model")
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(digits_config, str(tmp_path / "run"))
  assert "init_from checkpoint" in str(error.value) and "teacher" not in str(error.value)


def test_a_missing_init_from_path_gets_no_stages_hint(digits_config, tmp_path):
  digits_config.init_from = str(tmp_path / "no" / "such" / "checkpoints")
  with pytest.raises(FileNotFoundError) as error:
    train.train_and_evaluate(digits_config, str(tmp_path / "run"))
  assert "--config.stages" not in str(error.value) and "does not exist" in str(error.value)


# The disk fills while the background thread writes step 10's meta (Orbax's JSON handler, an
# internal hook: the failure surfaces asynchronously, as a real full disk's does).
_FULL_DISK = """
import errno, os, runpy, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
original = handler.JsonCheckpointHandler._save_fn
async def _save_fn(self, x, directory):
  step = int(os.path.basename(os.path.dirname(str(directory))).split(".")[0])
  if step >= 10:
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))
  return await original(self, x, directory)
handler.JsonCheckpointHandler._save_fn = _save_fn
sys.argv = ["main", "--config=configs/default.py", "--workdir=" + sys.argv[1],
            "--config.num_train_steps=20", "--config.checkpoint_every_steps=5",
            "--config.log_every_steps=5", "--config.eval_every_epochs=100"]
runpy.run_module("bmd_jax.main", run_name="__main__")
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_path_and_checkpoint_kept(tmp_path):
  result = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  (line,) = [l for l in result.stderr.splitlines() if "disk is full" in l]
  assert "10.orbax-checkpoint-tmp" in line and "step 5 in" in line
