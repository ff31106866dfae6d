"""Issue 27's run list in the GPU engine's window (bench/gpu_run.sh --group; issue 26): the
first wave's seven variants train as one run group in the dry run, come back as archives of at
most 15 MiB with a manifest keyed <group>/<run>, and a next window that lacks a carried
checkpoint of one of them is refused in one line."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests.test_gpu_run import _tiny_cifar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import window_archives  # pylint: disable=g-import-not-at-top,wrong-import-position

WAVE1 = ("plain", "kurtosis_only", "wdm_only", "bdbnn", "bdbnn_target1.2", "bdbnn_target1.4",
         "bdbnn_per_layer")
GROUP = "wave1_s0_blocks1"  # gpu_train.py's folder for --group=wave1,seeds=0 in a dry run


def _env(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu")
  env.pop("OUT", None)
  return env


def _fake_group(root, runs, bytes_each):
  """A group folder whose runs each hold one finished step-1 checkpoint of `bytes_each`."""
  (root / "g").mkdir(parents=True)
  (root / "g" / window_archives.GROUP_FILE).write_text("{}")
  for run in runs:
    step = root / "g" / run / "checkpoints" / "step1" / "4"
    step.mkdir(parents=True)
    (step / "state").write_bytes(b"x" * bytes_each)
    (root / "g" / run / "tensorboard").mkdir()
    (root / "g" / run / "tensorboard" / "events").write_bytes(b"x" * bytes_each)  # left out


def test_a_group_is_split_over_archives_that_can_come_back(tmp_path):
  """Five runs of 6 MiB: archives of at most 15 MiB (two, two, one run), each with the group's
  run list; the manifest names every run's archive and finished steps under <group>/<run>,
  and keeps a carried run that this window did not hold."""
  runs = [f"r{i}_s0" for i in range(5)]
  _fake_group(tmp_path / "runs", runs, 6 * 2**20)
  plan = window_archives.plan(str(tmp_path / "runs"))
  assert plan == {f"runs_g.{i}.tar.gz": ["g/run_group.json", *[f"g/{r}" for r in chunk]]
                  for i, chunk in enumerate((runs[:2], runs[2:4], runs[4:]))}
  carried = tmp_path / "carried.json"
  carried.write_text(json.dumps({"runs": {"other_seed0": {"archive": "runs_other.tar.gz",
                                                          "finished_steps": {"step1": 9}}}}))
  manifest = window_archives.manifest(str(tmp_path / "runs"), plan, str(carried))["runs"]
  assert manifest["g/r4_s0"] == {"archive": "runs_g.2.tar.gz", "finished_steps": {"step1": 4}}
  assert set(manifest) == {"other_seed0", *[f"g/{r}" for r in runs]}


def test_a_group_caught_between_its_runs_saves_is_not_packed(tmp_path):
  """One run of a group a save ahead of the others (one checkpoint kept: no step common to all):
  the plan refuses that view (the packer tries again) unless told to take it as it is."""
  _fake_group(tmp_path / "runs", ["a_s0", "b_s0"], 10)
  ahead = tmp_path / "runs" / "g" / "b_s0" / "checkpoints" / "step1" / "6"
  ahead.mkdir()
  with pytest.raises(window_archives.UnevenGroup, match="different steps"):
    window_archives.plan(str(tmp_path / "runs"))
  assert window_archives.plan(str(tmp_path / "runs"), allow_uneven=True)
  out = tmp_path / "manifest.json"
  command = [sys.executable, os.path.join(REPO, "bench", "window_archives.py"), "plan",
             str(tmp_path / "runs"), "", str(out)]
  assert subprocess.run(command, capture_output=True).returncode == 3 and not out.exists()
  ahead.rename(ahead.with_name("4.ahead"))  # as run_group moves it aside: no longer a step
  assert subprocess.run(command, capture_output=True).returncode == 0 and out.exists()


def test_the_carried_manifests_archives_unpack_first(tmp_path):
  """The archives the carried manifest names come first (sorted); another archive (a kill
  between two renames left it unnamed) comes after, to be unpacked without overwriting."""
  for name in ("runs_g.1.tar.gz", "runs_g.0.tar.gz", "runs_g.2.tar.gz", "jax_cache.tar.gz"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "manifest.json").write_text(json.dumps({"runs": {
      "g/a_s0": {"archive": "runs_g.1.tar.gz"}, "g/b_s0": {"archive": "runs_g.0.tar.gz"}}}))
  assert window_archives.carried_archives(str(tmp_path)) == [
      ("named", str(tmp_path / "runs_g.0.tar.gz")), ("named", str(tmp_path / "runs_g.1.tar.gz")),
      ("other", str(tmp_path / "runs_g.2.tar.gz"))]


def test_the_budget_line_warns_when_the_next_window_cannot_carry_it(tmp_path):
  out, payload = tmp_path / "out", tmp_path / "payload"
  out.mkdir()
  (payload / "wheels").mkdir(parents=True)
  (payload / "cifar10.npz").write_bytes(b"x" * 18_000_000)
  (out / "runs_g.0.tar.gz").write_bytes(b"x" * 15_000_000)
  line = window_archives.budget(str(out), str(payload))
  assert line.startswith("the next window carries 37.5 MB of 67.1"), line
  for i in (1, 2, 3):
    (out / f"runs_g.{i}.tar.gz").write_bytes(b"x" * 15_000_000)
  assert window_archives.budget(str(out), str(payload)).startswith(
      "WARNING: the next window carries 82.5 MB of 67.1")


def test_a_missing_group_checkpoint_is_refused_in_one_line(tmp_path):
  """gpu_train.py --check_only --group: every run of the group must hold the steps the
  manifest lists; one missing run is named, with the archive to carry."""
  runs_dir = tmp_path / "runs"
  expected = {f"{GROUP}/{v}_s0": {"archive": f"runs_{GROUP}.0.tar.gz",
                                  "finished_steps": {"step1": 3}} for v in WAVE1}
  (tmp_path / "manifest.json").write_text(json.dumps({"runs": expected}))
  for run in expected:
    if not run.endswith("/wdm_only_s0"):
      (runs_dir / run / "checkpoints" / "step1" / "3").mkdir(parents=True)
  command = [sys.executable, os.path.join(REPO, "bench", "gpu_train.py"), "--check_only",
             "--data_dir=unused", f"--runs_dir={runs_dir}", "--group=wave1,seeds=0",
             "--blocks_per_stage=1", f"--manifests={tmp_path / 'manifest.json'}"]
  refused = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=300)
  assert refused.returncode != 0
  assert refused.stderr.strip().splitlines()[-1] == (
      f"gpu_train.py: refused: run {GROUP}/wdm_only_s0's stage step1 should continue from "
      f"step 3 ({tmp_path / 'manifest.json'}), but {runs_dir / GROUP / 'wdm_only_s0'} has none: "
      f"carry runs_{GROUP}.0.tar.gz in bench/gpu_payload/, or pass --restart_from_scratch")
  # Another spelling of the same runs checks the same folder.
  respelled = [c.replace("--group=wave1,seeds=0", "--group=wave1,seeds=0-0") for c in command]
  assert subprocess.run(respelled, env=_env(tmp_path), capture_output=True, text=True,
                        timeout=300).stderr == refused.stderr
  (runs_dir / GROUP / "wdm_only_s0" / "checkpoints" / "step1" / "3").mkdir(parents=True)
  assert subprocess.run(command, env=_env(tmp_path), timeout=300).returncode == 0


@pytest.mark.slow
def test_the_first_wave_trains_as_one_group_in_the_window_dry_run(tmp_path):
  """gpu_run.sh --dry_run --group wave1,seeds=0: seven runs, both steps, one program; records
  for each, archives (several: their size limit lowered to 3 MiB) and manifest that a next
  window carries and continues from, and run folders that `compare` reads as seven variants."""
  out = tmp_path / "out"

  def window(out, payload=None):
    command = [os.path.join(REPO, "bench", "gpu_run.sh"), "--dry_run", "--train_only",
               "--group", "wave1,seeds=0", "--epochs", "1", "--out", str(out),
               *(["--payload", str(payload)] if payload else [])]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env=dict(_env(tmp_path), BMD_ARCHIVE_CHUNK_BYTES=str(3 * 2**20)))

  result = window(out)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  files = set(os.listdir(out))
  archives = sorted(f for f in files if f.startswith("runs_"))
  assert len(files) <= 8 and {"manifest.json", "records.json", "log.txt"} <= files, files
  assert archives == [f"runs_{GROUP}.{i}.tar.gz" for i in range(len(archives))], files
  assert len(archives) >= 3, archives  # 7 runs of ~1.4 MB in step 2, split at 3 MiB
  assert all(os.path.getsize(out / f) < 16 * 2**20 for f in files)
  records = json.load(open(out / "records.json"))
  assert sorted(r["variant"] for r in records) == sorted(WAVE1)
  assert all(r["complete"] and r["seed"] == 0 and 0 <= r["top1"] <= 1 for r in records), records
  manifest = json.load(open(out / "manifest.json"))["runs"]
  assert {run: m["finished_steps"] for run, m in manifest.items()} == {
      f"{GROUP}/{v}_s0": {"step1": 3, "step2": 3} for v in WAVE1}

  unpacked = tmp_path / "unpacked"
  for archive in archives:
    with tarfile.open(out / archive) as tar:
      tar.extractall(unpacked, filter="data")
  group = unpacked / GROUP
  assert json.load(open(group / "run_group.json"))["runs"] == [f"{v}_s0" for v in WAVE1]
  compared = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.compare", *sorted(str(p) for p in group.iterdir()
                                                              if p.is_dir()),
       "--baseline=plain", f"--json={tmp_path / 'compare.json'}"],
      cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert compared.returncode == 0, compared.stderr[-2000:]
  summary = json.load(open(tmp_path / "compare.json"))
  top1 = {r["variant"]: r["top1"] for r in records}
  for run in summary["runs"]:
    assert run["figures"]["final"] == pytest.approx(100 * top1[run["variant"]]), run

  # The returned archives evaluated afterwards on one device: each run's own top-1 again.
  data = tmp_path / "data"
  _tiny_cifar(data)  # the dry run's images: the same generator and seed
  evaluated = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "evaluate_runs.py"), f"--runs={out}",
       f"--data_dir={data}", f"--json={tmp_path / 'evaluation.json'}"],
      cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  again = {r["run"]: r for r in json.load(open(tmp_path / "evaluation.json"))}
  assert set(again) == {r["run"] for r in records}
  for record in records:
    assert (again[record["run"]]["stage"], again[record["run"]]["step"]) == ("step2", 3)
    assert again[record["run"]]["top1"] == pytest.approx(record["top1"], abs=1e-6)

  # The next window carries the archives and the manifest: the group is whole again and
  # nothing trains from scratch.
  payload = tmp_path / "payload"
  payload.mkdir()
  for name in [*archives, "manifest.json"]:
    shutil.copy(out / name, payload / name)
  continued = window(tmp_path / "continued", payload)
  assert continued.returncode == 0, continued.stdout[-4000:] + continued.stderr[-2000:]
  assert "from step 0" not in continued.stdout, continued.stdout[-4000:]
  steps = lambda runs: {run: m["finished_steps"] for run, m in runs.items()}
  assert steps(json.load(open(tmp_path / "continued" / "manifest.json"))["runs"]) == steps(
      manifest)
  assert all(r["complete"] for r in json.load(open(tmp_path / "continued" / "records.json")))
