"""What a GPU window returns of its runs: which archive holds which run folders, and the
manifest of each run's finished checkpoints (bench/gpu_run.sh calls both at every pack).

    python bench/window_archives.py plan RUNS_DIR
        one line per archive: NAME<TAB>folder<TAB>folder...  (folders relative to RUNS_DIR)
    python bench/window_archives.py manifest RUNS_DIR [CARRIED_MANIFEST]
        {"runs": {run: {"archive", "finished_steps": {stage: step}}}, "written": ...}
    python bench/window_archives.py check RUNS_DIR MANIFEST[,MANIFEST] RUN...
        exit 2 with one line when a run lacks a checkpoint that a manifest lists

Single runs (<variant>_seed<n>/, bench/gpu_train.py's, with checkpoints/<stage>/<step>/; or
<variant>_s<n>/ of the PyTorch reference, bench/torch_irnet_train.py's, with checkpoint.pt and
its checkpoint.json: its stage is 'train') go into runs_<variant>.tar.gz, one archive per
variant. A run group (a folder with run_group.json, its runs inside) goes into
runs_<group>.<i>.tar.gz, its runs split so that no archive's files exceed CHUNK_BYTES: a file
that comes back from the machine may hold 16 MiB, and a group of 14 runs in step 2 holds
~60 MB. A group's run is named <group>/<run> in the manifest, the path gpu_train.py checks.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

TORCH_FILE = "checkpoint.json"  # bench/torch_irnet_train.py's record of its checkpoint's step
GROUP_FILE = "run_group.json"  # bmd_jax.training.run_group.GROUP_FILE (no jax import here)
WALL_FILE = "wall_seconds.json"  # bench/gpu_train.py's
CHUNK_BYTES = 15 * 2**20  # under the 16 MiB a returned file may hold: gzip barely shrinks floats


def _size(folder: str) -> int:
  """Bytes that an archive of the folder carries (TensorBoard files are left out)."""
  total = 0
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if d != "tensorboard" and "orbax-checkpoint-tmp" not in d]
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def _groups(runs_dir: str) -> list[str]:
  return sorted(d for d in os.listdir(runs_dir)
                if os.path.isfile(os.path.join(runs_dir, d, GROUP_FILE)))


def _group_runs(runs_dir: str, group: str) -> list[str]:
  folder = os.path.join(runs_dir, group)
  return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def plan(runs_dir: str) -> dict[str, list[str]]:
  """{archive name: folders relative to runs_dir}, in a fixed order."""
  archives: dict[str, list[str]] = {}
  for run in sorted(os.listdir(runs_dir)):
    if "_seed" in run and os.path.isdir(os.path.join(runs_dir, run, "checkpoints")):
      archives.setdefault(f"runs_{run.rsplit('_seed', 1)[0]}.tar.gz", []).append(run)
    elif os.path.isfile(os.path.join(runs_dir, run, TORCH_FILE)):
      archives.setdefault(f"runs_{re.sub(r'_s[0-9]+$', '', run)}.tar.gz", []).append(run)
  for group in _groups(runs_dir):
    chunks, used = [[]], 0
    for run in _group_runs(runs_dir, group):
      size = _size(os.path.join(runs_dir, group, run))
      if chunks[-1] and used + size > CHUNK_BYTES:
        chunks.append([])
        used = 0
      chunks[-1].append(f"{group}/{run}")
      used += size
    # Every archive of a group carries its run list (any one of them unpacks as a group) and
    # the group's wall seconds so far (bench/gpu_train.py adds each window's).
    shared = [f"{group}/{f}" for f in (GROUP_FILE, WALL_FILE)
              if os.path.isfile(os.path.join(runs_dir, group, f))]
    for index, chunk in enumerate(chunks):
      archives[f"runs_{group}.{index}.tar.gz"] = [*shared, *chunk]
  return archives


def finished_steps(run_folder: str) -> dict[str, int]:
  """{stage: newest finished checkpoint's step} (Orbax names a step's folder by its number
  only once the save is complete; the PyTorch reference writes checkpoint.json once its
  checkpoint.pt is in place)."""
  stages = os.path.join(run_folder, "checkpoints")
  torch_record = os.path.join(run_folder, TORCH_FILE)
  if not os.path.isdir(stages):
    if os.path.isfile(torch_record):
      return {"train": int(json.load(open(torch_record))["step"])}
    return {}
  steps = {s: max((int(d) for d in os.listdir(os.path.join(stages, s)) if d.isdigit()),
                  default=0) for s in sorted(os.listdir(stages))}
  return {s: n for s, n in steps.items() if n}


def manifest(runs_dir: str, carried: str = "") -> dict:
  """The runs found in runs_dir with their archive and finished steps. A run the carried
  manifest lists but runs_dir lacks (not trained in this window, its archive left behind)
  keeps its entry, so a later window still refuses to restart it."""
  runs = {}
  if carried and os.path.exists(carried):
    runs.update(json.load(open(carried))["runs"])
  for archive, folders in plan(runs_dir).items():
    for run in folders:
      if not run.endswith((GROUP_FILE, WALL_FILE)):
        runs[run] = {"archive": archive,
                     "finished_steps": finished_steps(os.path.join(runs_dir, run))}
  return {"runs": runs, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def missing_checkpoints(manifest_paths, runs_dir: str, runs) -> str:
  """'' when every planned run (a folder under runs_dir) has the finished checkpoints the
  manifests expect, else one line naming the first that does not and what to do."""
  for path in manifest_paths:
    if not os.path.exists(path):
      continue
    try:
      expected = json.load(open(path))["runs"]
    except (OSError, ValueError, KeyError) as e:
      return f"manifest {path} cannot be read ({e}); fix or remove it"
    for run in runs:
      found = finished_steps(os.path.join(runs_dir, run))
      for stage, step in sorted(expected.get(run, {}).get("finished_steps", {}).items()):
        if found.get(stage, 0) < step:
          archive = expected[run].get("archive", "its runs_*.tar.gz")
          have = f"step {found[stage]}" if found.get(stage) else "none"
          return (f"run {run}'s stage {stage} should continue from step {step} ({path}), but "
                  f"{os.path.join(runs_dir, run)} has {have}: "
                  f"carry {archive} in bench/gpu_payload/, or pass --restart_from_scratch")
  return ""


if __name__ == "__main__":
  command, runs_dir, *rest = sys.argv[1:]
  if command == "plan":
    for name, folders in plan(runs_dir).items():
      print("\t".join([name, *folders]))
  elif command == "manifest":
    print(json.dumps(manifest(runs_dir, *rest), indent=1))
  elif command == "check":
    problem = missing_checkpoints(rest[0].split(","), runs_dir, rest[1:])
    if problem:
      print(f"window_archives.py: refused: {problem}", file=sys.stderr)
      sys.exit(2)
  else:
    sys.exit(f"window_archives.py: unknown command {command!r}: plan or manifest")
