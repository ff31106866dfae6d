"""bench/steps_per_dispatch.py end to end on a tiny model: every configuration runs, and each
writes a throughput record with issue 26's fields and positive figures."""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("device", "model", "batch_size", "runs", "steps_per_dispatch",
          "images_per_second_total", "images_per_second_per_run", "rounds", "date", "command")


@pytest.mark.slow  # compiles three train programs: about a minute on the 2-core machine
def test_records(tmp_path):
  # Torch eager only: torch.compile's first step takes minutes on CPU.
  subprocess.run([sys.executable, os.path.join(REPO, "bench", "steps_per_dispatch.py"),
                  "--blocks_per_stage=1", "--batch=8", "--examples=64", "--steps=2",
                  "--rounds=2", "--dispatch=old,1,2", "--torch=eager",
                  f"--results_dir={tmp_path}"], check=True, cwd=REPO, timeout=900)
  paths = sorted(glob.glob(str(tmp_path / "throughput_*.json")))
  names = [os.path.basename(p) for p in paths]
  assert names == ["throughput_cpu_resnet8-cifar_jax-1-per-dispatch.json",
                   "throughput_cpu_resnet8-cifar_jax-2-per-dispatch.json",
                   "throughput_cpu_resnet8-cifar_jax-old-loop.json",
                   "throughput_cpu_resnet8-cifar_torch-eager.json"]
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    assert all(field in record for field in FIELDS), (path, record.keys())
    assert record["device"] == "cpu" and record["runs"] == 1 and record["batch_size"] == 8
    assert len(record["rounds"]) == 2 and all(r > 0 for r in record["rounds"])
    assert record["images_per_second_total"] > 0
    assert record["images_per_second_per_run"] == record["images_per_second_total"]
  steps = {json.load(open(p))["what"]: json.load(open(p))["steps_per_dispatch"] for p in paths}
  assert steps == {"old": 1, "1-per-dispatch": 1, "2-per-dispatch": 2, "torch-eager": 1}


def test_runs_other_than_one_refused():
  result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "steps_per_dispatch.py"),
                           "--runs=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "only 1 for now" in result.stderr


def test_command_buffer_value_checked_before_use():
  # XLA aborts at backend start on a value it does not parse: the script says so first.
  result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "steps_per_dispatch.py"),
                           "--xla_gpu_command_buffer=NOT_AN_OP_TYPE", "--dispatch=",
                           "--torch="], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "this jaxlib refuses" in result.stderr
  assert "NOT_AN_OP_TYPE" in result.stderr
