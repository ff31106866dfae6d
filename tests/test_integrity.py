"""Checkpoint integrity through the command line (issue 29, item 1 and the export tool's unclear
cases): a flipped bit is caught by the checksum and the previous step used; export falls back
as training does, and every case it cannot serve is one line without a traceback."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bmd_jax.tools import analyze
from bmd_jax.infra import checkpoint, config_files
from bmd_jax import models
from bmd_jax.training import stages
from bmd_jax.configs import default

pytestmark = pytest.mark.slow  # the module trains a 30-step run through the command line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The run: checkpoints at steps 20, 22 (the end of the first epoch) and 30.
TRAIN = ["--config=configs/default.py", "--config.num_train_steps=30",
         "--config.log_every_steps=5", "--config.checkpoint_every_steps=10",
         "--config.eval_every_epochs=100"]


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                        text=True, timeout=300)


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cli_run") / "W")
  result = _run("bmd_jax.main", f"--workdir={workdir}", *TRAIN)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture
def workdir(_trained_once, tmp_path):
  """A copy of the finished 30-step run, which the test may damage."""
  copy = str(tmp_path / "W")
  shutil.copytree(_trained_once, copy)
  return copy


def _step_dir(workdir, step):
  return os.path.join(workdir, "checkpoints", "train", str(step))


def _flip_a_bit(workdir, step=30):
  """The issue's damage: one bit flipped mid-file in the largest array file of the state."""
  files = glob.glob(os.path.join(_step_dir(workdir, step), "state", "ocdbt.process_0", "d", "*"))
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


def _one_line_error(result):
  assert result.returncode != 0, result.stdout[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  # cli.py's boundary: "bmd_jax.tools.export: <message> (traceback in <workdir>/error.log)"
  lines = [l for l in result.stderr.splitlines() if l.startswith("bmd_jax.tools.export:")]
  assert len(lines) == 1, result.stderr[-4000:]
  return lines[0]


def _export(workdir, out, *flags):
  return _run("bmd_jax.tools.export", f"--workdir={workdir}", f"--out={out}", *flags)


def _exported_step(out):
  with np.load(out) as data:
    return json.loads(str(data["manifest"]))["source"]["step"]


def test_a_flipped_bit_is_damage_and_the_previous_step_is_resumed(workdir, _trained_once):
  _flip_a_bit(workdir)
  result = _run("bmd_jax.main", f"--workdir={workdir}", *TRAIN)
  assert result.returncode == 0, result.stderr[-3000:]
  output = result.stdout + result.stderr
  assert "checksum" in output and "damaged" in output, output[-3000:]
  assert "resumed from step 22" in output, output[-3000:]
  assert os.path.isdir(_step_dir(workdir, 30) + ".damaged")
  assert checkpoint.finished_steps(os.path.dirname(_step_dir(workdir, 30)))[-1] == 30
  # Step 30 trained again from step 22 is the step 30 of the undamaged run, bit for bit.
  again, first = (checkpoint.read_state(os.path.join(_step_dir(w, 30), "state"))["params"]
                  for w in (workdir, _trained_once))
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, first)


def test_a_cut_checkpoint_is_resumed_past_without_tracebacks(workdir):
  # TensorStore's reads abandoned with the cut files report 'Event loop is closed' tracebacks
  # long after the restore failed (29 to 40 of them, while training went on).
  _truncate(glob.glob(os.path.join(_step_dir(workdir, 30), "state", "**", "d", "*"),
                      recursive=True))
  result = _run("bmd_jax.main", f"--workdir={workdir}", *TRAIN)
  assert result.returncode == 0, result.stderr[-3000:]
  output = result.stdout + result.stderr
  assert "resumed from step 22" in output and "Traceback" not in output, output[-3000:]


def _truncate(files):
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 3)


def test_export_falls_back_from_a_flipped_bit_and_refuses_it_when_named(workdir, tmp_path):
  _flip_a_bit(workdir)
  out = str(tmp_path / "model.npz")
  result = _export(workdir, out)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "checksum" in result.stderr and _step_dir(workdir, 30) in result.stderr
  assert _exported_step(out) == 22
  line = _one_line_error(_export(workdir, str(tmp_path / "named.npz"), "--step=30"))
  assert "checksum" in line and _step_dir(workdir, 30) in line, line


def test_export_falls_back_when_the_newest_metadata_is_missing(workdir, tmp_path):
  os.remove(os.path.join(_step_dir(workdir, 30), "meta", "metadata"))
  out = str(tmp_path / "model.npz")
  result = _export(workdir, out)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _exported_step(out) == 22


def test_every_checkpoint_damaged_is_one_line(workdir, tmp_path):
  _truncate(glob.glob(os.path.join(workdir, "checkpoints", "train", "*", "state", "**", "d",
                                   "*"), recursive=True))
  line = _one_line_error(_export(workdir, str(tmp_path / "model.npz")))
  assert "no checkpoint" in line and _step_dir(workdir, 20) in line, line
  # analyze reads through the same functions: one error naming the folders (its command line
  # prints it as its error boundary does).
  with pytest.raises(checkpoint.CheckpointDamagedError) as error:
    analyze.stage_weights(workdir, "train")
  assert "\n" not in str(error.value) and _step_dir(workdir, 30) in str(error.value)


def test_export_of_a_step_that_does_not_exist_lists_the_steps(workdir, tmp_path):
  line = _one_line_error(_export(workdir, str(tmp_path / "model.npz"), "--step=7"))
  assert "step 7" in line and "[20, 22, 30]" in line, line


def test_export_of_a_run_with_only_its_first_step_is_one_line(tmp_path):
  recipe = config_files.use_two_steps(default.get_config(), {})
  recipe.stages = "step1"  # the two-step recipe run with --config.stages=step1
  config = stages.stage_list(recipe)[0].config
  params, batch_stats = models.initialized(jax.random.PRNGKey(0),
                                           models.create_model(config, 10), (8, 8, 1))
  manager = checkpoint.create_manager(str(tmp_path), "step1")
  checkpoint.save(manager, 4, jax.device_get({"params": params, "batch_stats": batch_stats}),
                  None, {"stage": "step1", "config": config.to_json()}, wait=True)
  manager.close()
  line = _one_line_error(_export(tmp_path, str(tmp_path / "model.npz")))
  assert "step1" in line and "binary_activations" in line and "step2" in line, line
  line = _one_line_error(_export(tmp_path, str(tmp_path / "model.npz"), "--stage=step1"))
  assert "binary_activations" in line, line
