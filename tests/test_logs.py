"""Logs a researcher can use: progress and ETA in non-terminal log lines, lines above the
progress bar on a terminal, the run record (config, versions, commit), one TensorBoard run per
stage with hparams and latent-weight histograms, stage-end and checkpoint lines."""

import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from bmd_jax.infra import config_files
from bmd_jax.training import metric_writers, run_record, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger("bmd_jax")


def _digits_config(steps):
  from bmd_jax.configs import default
  config = default.get_config()
  config.num_train_steps = steps
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_epochs = 100.0
  return config


# --- console lines -------------------------------------------------------------------------

def test_lines_off_a_terminal_say_percent_done_and_eta(monkeypatch, caplog, tmp_path):
  monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, as under SLURM or nohup
  caplog.set_level(logging.INFO, logger="bmd_jax")
  writer = metric_writers.MetricWriter(str(tmp_path), tensorboard=False)
  writer.start_stage("step1", _digits_config(4), total_steps=200, first_step=0)
  for step in (10, 20):
    writer.write(step, step / 20, {"stage": "step1", "train/loss": 1.0})
  writer.close()
  lines = [r.getMessage() for r in caplog.records if "train/loss" not in r.getMessage()]
  assert "step 10/200 (5.0%, ETA" in lines[0]
  assert re.search(r"step 20/200 \(10\.0%, ETA \d+:\d\d:\d\d, epoch 1\.00\): loss=1", lines[1])


def test_lines_on_a_terminal_leave_progress_to_the_bar(monkeypatch, caplog, tmp_path):
  monkeypatch.setattr(metric_writers, "interactive", lambda: True)
  caplog.set_level(logging.INFO, logger="bmd_jax")
  writer = metric_writers.MetricWriter(str(tmp_path), tensorboard=False)
  writer.start_stage("step1", _digits_config(4), total_steps=200, first_step=0)
  writer.write(10, 0.5, {"stage": "step1", "train/loss": 1.0})
  writer.close()
  assert caplog.records[-1].getMessage() == "[step1] step 10 (epoch 0.50): loss=1"


def test_log_lines_are_written_above_the_bar(monkeypatch, capsys):
  monkeypatch.setattr(metric_writers, "interactive", lambda: True)
  handler = logging.StreamHandler(sys.stderr)  # the console handler, as main.py installs one
  log.addHandler(handler)
  monkeypatch.setattr(log, "level", logging.INFO)
  try:
    with metric_writers.progress_bar(10, 0, "step1") as bar:
      bar.update(3)
      log.info("a line between updates")
      bar.update(3)
  finally:
    log.removeHandler(handler)
  pieces = re.split(r"[\r\n]", capsys.readouterr().err)
  # Written through the bar, the line would continue the bar's own text ("... 3/10 [...]a line").
  assert "a line between updates" in pieces


def test_without_tensorboardx_the_rest_is_still_written(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails, as on the GPU machine
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.start_stage("step1", _digits_config(4), total_steps=4, first_step=0)
  writer.write(2, 0.1, {"stage": "step1", "train/loss": 1.0})
  writer.histograms(2, "step1", {"conv1": {"latent_kernel": np.ones((3, 3, 1, 2))}},
                    ["conv1/latent_kernel"])
  writer.checkpoint_saved("step1", 2, str(tmp_path / "checkpoints"), finished=True)
  writer.end_stage("step1", 4, {"eval/accuracy": 0.5}, "kept")
  writer.close()
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


# --- the run record --------------------------------------------------------------------------

def test_run_record_holds_config_versions_and_commit(tmp_path):
  config = _digits_config(4)
  run_record.write(str(tmp_path), config)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved == json.loads(config.to_json())
  info = json.loads((tmp_path / "run_info.json").read_text())
  for name in ("python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    assert info["versions"][name], name
  if shutil.which("git") and os.path.exists(os.path.join(REPO, ".git")):
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert info["git"]["commit"] == head and isinstance(info["git"]["dirty"], bool)


def test_no_commit_outside_a_repository_or_without_git(tmp_path, monkeypatch):
  (tmp_path / "__init__.py").write_text("")
  assert run_record.git_state(str(tmp_path)) is None
  monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
  assert run_record.git_state() is None


# --- a two-stage run: TensorBoard runs, histograms, stage-end and checkpoint lines -----------

class _Lines(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
  """(config, workdir, log lines) of two 4-step stages, logged as into a file."""
  config = config_files.use_two_steps(_digits_config(4), {"wdm": {"weight": 1.0},
                                                          "kd": {"weight": 1.0}})
  workdir = tmp_path_factory.mktemp("two_stages")
  lines = _Lines()
  log.addHandler(lines)
  # setLevel, not a patched attribute: it also clears the logger's cached isEnabledFor answers,
  # which an earlier test at WARNING leaves behind (the lines were then silently dropped).
  level = log.level
  log.setLevel(logging.INFO)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sys, "stderr", io.StringIO())
    try:
      train.train_and_evaluate(config, str(workdir))
    finally:
      log.removeHandler(lines)
      log.setLevel(level)
  return config, workdir, lines.lines


def _events(folder):
  """Every tensorboard Event in a run folder (TFRecord framing: length, its CRC, data, CRC)."""
  from tensorboardX.proto import event_pb2
  events = []
  for name in sorted(os.listdir(folder)):
    data = (folder / name).read_bytes()
    while data:
      (length,) = struct.unpack("<Q", data[:8])
      events.append(event_pb2.Event.FromString(data[12:12 + length]))
      data = data[12 + length + 4:]
  return events


@pytest.mark.slow
def test_each_stage_has_its_own_tensorboard_run(two_stage_run):
  pytest.importorskip("tensorboardX")
  config, workdir, _ = two_stage_run
  assert sorted(os.listdir(workdir / "tensorboard")) == ["step1", "step2"]
  for stage in ("step1", "step2"):
    values = [(e.step, v) for e in _events(workdir / "tensorboard" / stage)
              for v in e.summary.value]
    losses = [step for step, v in values if v.tag == "train/loss"]
    assert losses == [2, 4]  # each stage counts from 0, in its own run
    histograms = {(step, v.tag) for step, v in values if v.HasField("histo")}
    layers = {tag for _, tag in histograms}
    assert layers == {"latent_weights/conv1/latent_kernel", "latent_weights/conv2/latent_kernel",
                      "latent_weights/conv0/latent_kernel"}
    # The start, and each checkpoint (every 2 steps; the last at the stage's end).
    assert {step for step, _ in histograms} == {0, 2, 4}
    tags = {v.tag for _, v in values}
    assert {"_hparams_/experiment", "_hparams_/session_start_info",
            "_hparams_/session_end_info"} <= tags
    start = next(v for _, v in values if v.tag == "_hparams_/session_start_info")
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    hparams = HParamsPluginData.FromString(start.metadata.plugin_data.content)
    hp = hparams.session_start_info.hparams
    assert hp["stage"].string_value == stage
    precision = "binary_activations" if stage == "step1" else "binary"
    assert hp["model.precision"].string_value == precision
    assert hp["learning_rate"].number_value == config.learning_rate
    assert not [name for name in hp if name.startswith("stage_overrides")]


@pytest.mark.slow
def test_run_lines_say_progress_checkpoints_and_stage_ends(two_stage_run):
  config, workdir, lines = two_stage_run
  for stage in ("step1", "step2"):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", stage)
    assert f"[{stage}] checkpoint of step 2 save started (asynchronous) in {directory}" in lines
    assert f"[{stage}] checkpoint of step 4 saved in {directory}" in lines
    end = [line for line in lines if line.startswith(f"[{stage}] stage finished at step 4: ")]
    assert len(end) == 1 and "eval/accuracy=" in end[0]
    assert end[0].endswith(f"the checkpoint kept is step 4 in {directory}")
    assert any(line.startswith(f"[{stage}] step 2/4 (50.0%, ETA ") for line in lines)
  assert json.loads((workdir / "config.json").read_text()) == json.loads(config.to_json())
