"""The PyTorch reference in a GPU window (bench/gpu_run.sh --torch_irnet; issue 27 item 3): its
runs train side by side in the dry run, come back in one archive with a manifest of their
steps, a next window carrying them resumes rather than restarts, and one whose archive did
not arrive is refused in one line."""

import json
import os
import shutil
import subprocess

import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install -e .[bench])")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _window(tmp_path, out, payload=None):
  env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp_path))
  env.pop("OUT", None)
  command = [os.path.join(REPO, "bench", "gpu_run.sh"), "--dry_run", "--train_only",
             "--torch_irnet", "0-1", "--epochs", "2", "--out", str(out),
             *(["--payload", str(payload)] if payload else [])]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)


@pytest.mark.slow
def test_the_reference_trains_and_continues_in_the_window_dry_run(tmp_path):
  first = _window(tmp_path, tmp_path / "out")
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
  out = tmp_path / "out"
  manifest = json.load(open(out / "manifest.json"))["runs"]
  assert manifest == {f"irnet_torch_s{s}": {"archive": "runs_irnet_torch.tar.gz",
                                            "finished_steps": {"train": 10}} for s in (0, 1)}
  records = json.load(open(out / "records.json"))
  assert [(r["run"], r["seed"], r["complete"]) for r in records] == [
      ("irnet_torch_s0", 0, True), ("irnet_torch_s1", 1, True)]

  payload = tmp_path / "payload"
  payload.mkdir()
  for name in ("runs_irnet_torch.tar.gz", "manifest.json"):
    shutil.copy(out / name, payload / name)
  again = _window(tmp_path, tmp_path / "again", payload)
  assert again.returncode == 0, again.stdout[-3000:]
  assert again.stdout.count("already finished (2 epochs); nothing to do") == 2, again.stdout

  os.remove(payload / "runs_irnet_torch.tar.gz")  # the archive did not travel
  refused = _window(tmp_path, tmp_path / "third", payload)
  assert refused.returncode == 2
  lines = [line for line in (refused.stdout + refused.stderr).splitlines() if "refused" in line]
  assert len(lines) == 1 and lines[0].startswith(
      "window_archives.py: refused: run irnet_torch_s0's stage train should continue from "
      f"step 10 ({payload / 'manifest.json'}), but "), lines
  assert lines[0].endswith("/runs/irnet_torch_s0 has none: carry runs_irnet_torch.tar.gz in "
                           "bench/gpu_payload/, or pass --restart_from_scratch"), lines
  assert "epoch 1/2" not in refused.stdout  # nothing trained
