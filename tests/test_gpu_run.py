"""bench/gpu_run.sh --dry_run: the prepared GPU window's command, at tiny sizes on the CPU, so
it cannot rot between windows (no timing asserted). 1.5-2.5 minutes on 2 cores (2026-11-28).
And a window that loses nothing (issue 26): killed at any moment it returns its last
checkpoint, which the next window resumes; a carried checkpoint that did not arrive is refused
in one line; the stop time is honoured; the size check names the largest items."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_KEYS = {"model", "variant", "seed", "epochs_per_step", "top1", "device", "wall_seconds",
               "command", "date"}


@pytest.mark.slow
def test_gpu_run_dry_run(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("OUT", None)
  result = subprocess.run([os.path.join(REPO, "bench", "gpu_run.sh"), "--dry_run", "--out",
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  files = sorted(os.listdir(out))
  assert len(files) <= 8, files  # what comes back from the GPU machine
  assert {"gpu_check.json", "train_step.json", "train_step_bf16.json", "records.json", "log.txt",
          "runs_bd_bnn.tar.gz", "runs_plain_binary.tar.gz", "manifest.json"} <= set(files)
  assert all(os.path.getsize(out / f) < 16 * 2**20 for f in files)
  check = json.load(open(out / "gpu_check.json"))
  assert check["max_update_rel_diff"] < 1e-5  # the CPU against itself here
  records = json.load(open(out / "records.json"))
  assert {r["variant"] for r in records} == {"bd_bnn", "plain_binary"}
  for record in records:
    assert record["complete"] and RECORD_KEYS <= set(record), record
    assert 0.0 <= record["top1"] <= 1.0
  manifest = json.load(open(out / "manifest.json"))["runs"]
  assert {run: m["finished_steps"] for run, m in manifest.items()} == {
      run: {"step1": 3, "step2": 3} for run in ("bd_bnn_seed0", "plain_binary_seed0")}


def _tiny_cifar(root):
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, count in (("train", 4), ("test", 2)):
    for c in range(10):
      os.makedirs(root / split / f"class{c}")
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
            root / split / f"class{c}" / f"{i}.jpg")


@pytest.mark.slow
def test_a_run_split_over_windows_equals_one_run(tmp_path):
  """bench/gpu_train.py stopped by its budget, then continued: the same weights, bitwise."""
  import jax
  import numpy as np
  from bmd_jax.infra import checkpoint
  _tiny_cifar(tmp_path / "data")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

  def window(runs, budget):
    command = ["python3", os.path.join(REPO, "bench", "gpu_train.py"),
               f"--data_dir={tmp_path / 'data'}", f"--runs_dir={runs}", "--epochs=2",
               "--variants=bd_bnn", "--batch_size=8", "--blocks_per_stage=1",
               "--num_train_steps=6", f"--budget_s={budget}", f"--records={runs}.json"]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return json.load(open(f"{runs}.json"))[0]

  assert not window(tmp_path / "split", 5)["complete"]  # stopped at step 1 of step 1
  continued = window(tmp_path / "split", 900)
  straight = window(tmp_path / "straight", 900)
  assert continued["complete"] and straight["complete"]
  assert continued["top1"] == straight["top1"]
  states = [checkpoint.read_state(str(tmp_path / run / "bd_bnn_seed0" / "checkpoints" / "step2"
                                      / "6" / "state")) for run in ("split", "straight")]
  jax.tree_util.tree_map(np.testing.assert_array_equal, *states)


def test_fitted_schedule_is_the_longest_that_fits():
  """gpu_train --epochs=0: every run's fixed cost plus two steps of E epochs at the measured
  step time (with the loop's slack) fits its share of the budget, and E + 1 would not.
  In a child process: bench/ modules define absl flags at import."""
  code = """
import sys; sys.path.insert(0, 'bench')
import gpu_train
for budget, runs, step_s, steps, fixed in ((240, 2, 0.003, 390, 60), (900, 4, 0.0021, 390, 45),
                                           (100, 2, 0.05, 390, 40)):
  e = gpu_train.fitted_epochs(budget, runs, step_s, steps, fixed)
  cost = lambda epochs: fixed + 2 * epochs * steps * step_s * gpu_train.LOOP_SLACK
  print(e, cost(e) <= budget / runs or e == 1, cost(e + 1) > budget / runs)
"""
  result = subprocess.run(["python3", "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.splitlines()]
  assert [r[1:] for r in rows] == [["True", "True"]] * 3, rows
  assert rows[0][0] == "11" and rows[2][0] == "1"  # 60 s / (2 * 390 * 3 ms * 2.2) = 11.7


# --- windows that lose nothing (issue 26, item 5) ------------------------------------------------

def _window_env(tmp_path, own_cache=False):
  env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp_path))
  env.pop("OUT", None)
  if own_cache:  # the window's own compilation cache, which it returns
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _window(tmp_path, out, *args, payload=None, own_cache=False, **popen):
  """bench/gpu_run.sh --dry_run --train_only for bd_bnn, 15 steps a stage (3 epochs of 5)."""
  command = [os.path.join(REPO, "bench", "gpu_run.sh"), "--dry_run", "--train_only",
             "--epochs", "2", "--variants", "bd_bnn", "--out", str(out),
             *(["--payload", str(payload)] if payload else []), *args]
  return subprocess.Popen(command, cwd=REPO, env=_window_env(tmp_path, own_cache),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _steps(out):
  try:
    return json.load(open(out / "manifest.json"))["runs"]["bd_bnn_seed0"]["finished_steps"]
  except (OSError, ValueError, KeyError):
    return {}


def _archived_steps(archive, into):
  """{stage: its newest finished step} in a runs_*.tar.gz, unpacked into `into`."""
  with tarfile.open(archive) as tar:
    tar.extractall(into, filter="data")
  stages = into / "bd_bnn_seed0" / "checkpoints"
  return {s: max(int(d) for d in os.listdir(stages / s) if d.isdigit())
          for s in os.listdir(stages)}


@pytest.mark.slow
def test_a_window_killed_mid_stage_returns_what_the_next_resumes(tmp_path):
  """SIGKILL to the whole window once step 1 has a mid-stage checkpoint: what is in the output
  folder then (archive and manifest, each renamed into place whole) agrees with itself, and the
  next window carrying it resumes step 1 from there and finishes; its returned archives hold
  the final weights, which bench/evaluate_runs.py evaluates to the window's own top-1."""
  out, more = tmp_path / "killed", ["--", "--num_train_steps=15", "--checkpoint_every_epochs=1"]
  window = _window(tmp_path, out, *more, start_new_session=True)
  deadline = time.time() + 600
  while _steps(out).get("step1", 0) < 5 and time.time() < deadline and window.poll() is None:
    time.sleep(0.2)
  os.killpg(window.pid, signal.SIGKILL)
  log = window.communicate()[0]
  carried = _steps(out)
  assert carried.get("step1", 0) >= 5, log[-3000:]
  returned = sorted(f for f in os.listdir(out) if not f.endswith(".part"))
  assert {"runs_bd_bnn.tar.gz", "manifest.json"} <= set(returned), returned
  assert len(os.listdir(out)) <= 8
  assert _archived_steps(out / "runs_bd_bnn.tar.gz", tmp_path / "unpacked") == carried

  payload = tmp_path / "payload"
  payload.mkdir()
  for name in ("runs_bd_bnn.tar.gz", "manifest.json"):
    os.rename(out / name, payload / name)
  out2 = tmp_path / "continued"
  log = _window(tmp_path, out2, *more, payload=payload, own_cache=True).communicate()[0]
  assert f"stage step1: resumed from step {carried['step1']}" in log or (
      carried["step1"] == 15 and "stage step1: already complete" in log), log[-3000:]
  assert "from step 0" not in log.split("stage step2")[0], log[-3000:]
  record = json.load(open(out2 / "records.json"))[0]
  assert record["complete"] and _steps(out2) == {"step1": 15, "step2": 15}, log[-3000:]
  assert os.path.getsize(out2 / "jax_cache.tar.gz") > 0  # --train_only returns its cache

  data = tmp_path / "data"
  _tiny_cifar(data)  # the dry run's images: the same generator and seed
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "evaluate_runs.py"), f"--runs={out2}",
       f"--data_dir={data}", f"--json={tmp_path / 'evaluation.json'}"],
      cwd=REPO, env=dict(_window_env(tmp_path), JAX_PLATFORMS="cpu"), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [evaluated] = json.load(open(tmp_path / "evaluation.json"))
  assert (evaluated["run"], evaluated["stage"], evaluated["step"]) == ("bd_bnn_seed0", "step2", 15)
  assert evaluated["top1"] == pytest.approx(record["top1"], abs=1e-6)


def test_a_missing_carried_checkpoint_is_refused_in_one_line(tmp_path):
  """The manifest expects a checkpoint whose archive did not travel: the window stops in its
  first seconds with one line naming the run, the step and the fix, before any check, timing
  or training; --restart_from_scratch lets it start anyway."""
  payload = tmp_path / "payload"
  payload.mkdir()
  manifest = {"runs": {"bd_bnn_seed0": {"archive": "runs_bd_bnn.tar.gz",
                                        "finished_steps": {"step1": 6, "step2": 2}}}}
  (payload / "manifest.json").write_text(json.dumps(manifest))
  began = time.time()
  window = _window(tmp_path, tmp_path / "out", payload=payload)
  log = window.communicate(timeout=300)[0]
  assert window.returncode == 2, log
  assert time.time() - began < 60, log
  refusals = [line for line in log.splitlines() if "refused" in line]
  assert len(refusals) == 1 and refusals[0].startswith(
      "gpu_train.py: refused: run bd_bnn_seed0's stage step1 should continue from step 6 "
      f"({payload / 'manifest.json'}), but "), log
  assert "carry runs_bd_bnn.tar.gz in bench/gpu_payload/, or pass --restart_from_scratch" in log
  assert "Traceback" not in log and "training for" not in log, log

  # The same check in gpu_train.py alone: the run's checkpoint present, or a deliberate restart.
  runs = tmp_path / "runs"
  check = [sys.executable, os.path.join(REPO, "bench", "gpu_train.py"), "--check_only",
           "--data_dir=unused", f"--runs_dir={runs}", "--variants=bd_bnn",
           f"--manifests={payload / 'manifest.json'}"]
  env = _window_env(tmp_path)
  assert subprocess.run(check, env=env, capture_output=True).returncode != 0
  assert subprocess.run(check + ["--restart_from_scratch"], env=env).returncode == 0
  for stage, step in (("step1", 6), ("step2", 1)):
    (runs / "bd_bnn_seed0" / "checkpoints" / stage / str(step) / "state").mkdir(parents=True)
  refused = subprocess.run(check, env=env, capture_output=True, text=True)
  assert "stage step2 should continue from step 2" in refused.stderr  # step 1 is not enough
  (runs / "bd_bnn_seed0" / "checkpoints" / "step2" / "2").mkdir()
  assert subprocess.run(check, env=env).returncode == 0


@pytest.mark.slow
def test_the_stop_time_is_honoured(tmp_path):
  """--stop_at: training saves at a dispatch boundary before it and the window ends soon after,
  its archive and manifest holding that step (a stage of 10**6 steps cannot finish)."""
  stop_at = int(time.time()) + 45
  out = tmp_path / "out"
  window = _window(tmp_path, out, "--stop_at", str(stop_at), "--",
                   "--num_train_steps=1000000", "--checkpoint_every_epochs=0",
                   "--checkpoint_every_minutes=0")
  log = window.communicate(timeout=600)[0]
  ended = time.time()
  assert window.returncode == 0, log[-3000:]
  assert "the stop time is near: stage step1 saved at step" in log, log[-3000:]
  assert ended < stop_at + 20, (ended - stop_at, log[-3000:])  # the save, records and packing
  [record] = json.load(open(out / "records.json"))
  done = record["steps_done"]["step1"]
  assert not record["complete"] and 0 < done < 10**6, record
  assert _steps(out) == {"step1": done}
  assert _archived_steps(out / "runs_bd_bnn.tar.gz", tmp_path / "unpacked") == {"step1": done}


def test_the_size_check_names_the_largest_items(tmp_path):
  """prepare_gpu_run.sh --check_only adds the working tree's files and the payload; over the
  limit it fails, naming the largest items, the biggest first."""
  payload = tmp_path / "payload"
  (payload / "wheels").mkdir(parents=True)
  (payload / "runs_bd_bnn.tar.gz").write_bytes(b"x" * 3_000_000)
  (payload / "wheels" / "ml_collections-1.1.0-py3-none-any.whl").write_bytes(b"x" * 100_000)
  command = [os.path.join(REPO, "bench", "prepare_gpu_run.sh"), "--check_only", "--payload",
             str(payload)]
  fits = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert fits.returncode == 0, fits.stderr
  tree = int(fits.stdout.split("working tree ")[1].split(" B")[0])
  assert f"+ payload 3100000 B = {tree + 3_100_000} B" in fits.stdout, fits.stdout
  over = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, BMD_TRAVEL_LIMIT_BYTES=str(tree + 1_000_000)))
  assert over.returncode == 1, over.stdout
  error = over.stderr.strip()
  assert len(error.splitlines()) == 1, error
  assert f"is 2100000 B over the {tree + 1_000_000} B limit" in error, error
  largest = error.split("the largest: ")[1]
  assert largest.startswith(f"{payload / 'runs_bd_bnn.tar.gz'} (3000000 B), "), error
