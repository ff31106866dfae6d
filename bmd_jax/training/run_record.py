"""What a run was: the resolved config, package versions and the code's git commit, written
into the workdir at every start so a result can be traced back to what produced it.

    <workdir>/config.json    the resolved config (command-line overrides applied)
    <workdir>/run_info.json  start time, command line, package versions, devices, git commit

Both are rewritten at each start (a resumed run records the code that resumes it); each
checkpoint also keeps its stage's config. Only process 0 writes.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax
import ml_collections

from bmd_jax.infra import paths

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
# The distributions whose versions decide what a run computes (names as pip knows them).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections",
            "grain", "tensorboardX", "bmd_jax")


def package_versions() -> dict[str, str | None]:
  """{distribution: version} plus python; None for a distribution that is not installed."""
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def _git(folder: str, *args: str) -> str | None:
  try:
    done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                          timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):  # no git, or it hangs
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: str | None = None) -> dict | None:
  """{'commit', 'dirty'} of the repository holding the bmd_jax package; None without one.

  The package's own files must be tracked there: a non-editable install inside some other
  repository (a project's virtualenv) must not report that project's commit.
  """
  package_dir = package_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
    return None
  commit = _git(package_dir, "rev-parse", "HEAD")
  if not commit:
    return None
  # Tracked files only: untracked scratch files do not change what the code computes.
  status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def run_info() -> dict:
  return {
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "argv": sys.argv,
      "versions": package_versions(),
      "git": git_state(),
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "processes": jax.process_count(),
  }


def config_json(config: ml_collections.ConfigDict) -> str:
  # best effort: a field JSON cannot hold (a function, a class) becomes its text, not an error
  return config.to_json_best_effort(indent=2, sort_keys=True)


def write(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json and run_info.json into `workdir` (process 0 only)."""
  if jax.process_index() != 0:
    return
  root = paths.resolve(workdir)  # a local folder or a URL (gs://)
  root.mkdir(parents=True, exist_ok=True)
  (root / CONFIG_FILE).write_text(config_json(config) + "\n")
  (root / RUN_INFO_FILE).write_text(json.dumps(run_info(), indent=2) + "\n")
