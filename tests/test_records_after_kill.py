"""Records that survive kills (issue 29, item 3): after a SIGKILL, a resumed run's metrics.jsonl
holds every step once, in valid JSON lines, and TensorBoard resumes at the restored step."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bmd_jax.training import metric_writers
from test_cloud_paths import FakeGcs, gcs  # noqa: F401  (the gs:// stand-in and its fixture)
from test_logs import _events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  from step_setup import short_digits_config
  return short_digits_config(200, 5)


def _record(stage, step, **metrics):
  return json.dumps({"step": step, "epoch": step / 50, "stage": stage, **metrics}) + "\n"


def _killed_run_text(stages=(("train", 100),), partial=""):
  """metrics.jsonl of a run killed after logging every 5th step up to each stage's last."""
  lines = [_record(stage, step, **{"train/loss": 1.0})
           for stage, last in stages for step in range(5, last + 1, 5)]
  lines.insert(10, _record(stages[0][0], 50, **{"eval/accuracy": 0.5}))
  return "".join(lines) + partial


def _lines(path):
  return [json.loads(line) for line in open(path)]  # every line valid JSON, or this raises


def _resume(workdir, stage, first_step, tensorboard=False):
  writer = metric_writers.MetricWriter(str(workdir), tensorboard=tensorboard, console=False)
  writer.start_stage(stage, _config(), total_steps=200, first_step=first_step)
  writer.write(first_step + 5, 1.0, {"stage": stage, "train/loss": 0.5})
  writer.close()
  return workdir / "metrics.jsonl"


def _train_steps(records, stage="train"):
  return [r["step"] for r in records if r.get("stage") == stage and "train/loss" in r]


def test_a_partial_last_line_gets_no_record_glued_onto_it(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(_killed_run_text(partial='{"step": 80, "tr'))
  records = _lines(_resume(tmp_path, "train", 100))
  assert _train_steps(records) == list(range(5, 101, 5)) + [105]


def test_records_past_the_restored_step_are_dropped(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text(_killed_run_text(partial='{"step": 80, "tr'))
  records = _lines(_resume(tmp_path, "train", 80))
  assert _train_steps(records) == list(range(5, 81, 5)) + [85]  # each step once, in order
  assert [r["step"] for r in records if "eval/accuracy" in r] == [50]
  assert "dropped 4 records" in caplog.text and "step 80" in caplog.text


def test_an_earlier_stage_resumed_drops_the_later_stages_records(tmp_path):
  # step1's last checkpoint was damaged and set aside: step1 resumes at 30, and step2 is
  # trained again after it
  (tmp_path / "metrics.jsonl").write_text(_killed_run_text((("step1", 40), ("step2", 20))))
  records = _lines(_resume(tmp_path, "step1", 30))
  assert _train_steps(records, "step1") == [5, 10, 15, 20, 25, 30, 35]
  assert not _train_steps(records, "step2")


def test_a_finished_stage_keeps_the_later_stages_records(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(_killed_run_text((("step1", 40), ("step2", 20))))
  writer = metric_writers.MetricWriter(str(tmp_path), tensorboard=False, console=False)
  writer.start_stage("step1", _config(), total_steps=40, first_step=40)  # already complete
  writer.start_stage("step2", _config(), total_steps=40, first_step=10)
  writer.close()
  records = _lines(tmp_path / "metrics.jsonl")
  assert _train_steps(records, "step1") == list(range(5, 41, 5))
  assert _train_steps(records, "step2") == [5, 10]


def test_tensorboard_resumes_at_the_restored_step(tmp_path):
  pytest.importorskip("tensorboardX")
  _resume(tmp_path, "train", 80, tensorboard=True)
  events = _events(tmp_path / "tensorboard" / "train")
  starts = [e.step for e in events if e.HasField("session_log")
            and e.session_log.status == e.session_log.START]
  # TensorBoard hides the events of earlier files from this step on: those past the restored
  # step, written before the kill; step 80's own were written before its checkpoint.
  assert starts == [81]


def test_a_url_workdirs_metrics_are_cut_too(gcs):  # noqa: F811
  gcs.pipe("gs://b/w/metrics.jsonl", _killed_run_text(partial='{"step": 80, "tr').encode())
  writer = metric_writers.MetricWriter("gs://b/w", tensorboard=False, console=False)
  writer.start_stage("train", _config(), total_steps=200, first_step=80)
  writer.write(85, 1.0, {"stage": "train", "train/loss": 0.5})
  writer.close()
  records = [json.loads(line) for line in gcs.cat("gs://b/w/metrics.jsonl").splitlines()]
  assert _train_steps(records) == list(range(5, 81, 5)) + [85]


def _tensorboard_view(folder):
  """{tag: [steps]} as TensorBoard shows a run: a SessionLog START at step N hides the events of
  earlier files at N and past it (purge_step)."""
  shown = []
  for event in _events(folder):
    if event.HasField("session_log") and event.session_log.status == event.session_log.START:
      shown = [(step, tag) for step, tag in shown if step < event.step]
    shown += [(event.step, v.tag) for v in event.summary.value]
  view = {}
  for step, tag in shown:
    view.setdefault(tag, []).append(step)
  return view


_COMMAND = [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
            "--config.num_train_steps=200", "--config.log_every_steps=5",
            "--config.checkpoint_every_steps=40", "--config.eval_every_epochs=100"]


def _run_killed_after(workdir, line):
  run = subprocess.Popen(_COMMAND + [f"--workdir={workdir}"], cwd=REPO, text=True,
                         env={**os.environ, "PYTHONPATH": REPO}, stderr=subprocess.PIPE)
  seen = []
  try:
    for text in run.stderr:
      seen.append(text)
      if line in text:
        run.send_signal(signal.SIGKILL)
        break
  finally:
    run.kill()
    run.wait()
  assert any(line in text for text in seen), "".join(seen[-30:])


@pytest.mark.slow
def test_a_run_killed_and_resumed_has_each_step_once(tmp_path):
  # The case: SIGKILL after "step 75/", a partial line left by the kill, the same
  # command again.
  _run_killed_after(tmp_path, "step 75/")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 80, "tr')
  done = subprocess.run(_COMMAND + [f"--workdir={tmp_path}"], cwd=REPO, text=True,
                        env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from step" in done.stderr, done.stderr[-3000:]
  assert _train_steps(_lines(tmp_path / "metrics.jsonl")) == list(range(5, 201, 5))
  if os.path.isdir(tmp_path / "tensorboard"):
    view = _tensorboard_view(tmp_path / "tensorboard" / "train")
    assert view["train/loss"] == list(range(5, 201, 5))
