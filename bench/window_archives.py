"""What a GPU window returns of its runs: which archive holds which run folders, and the
manifest of each run's finished checkpoints (bench/gpu_run.sh calls both at every pack).

    python bench/window_archives.py plan RUNS_DIR CARRIED_MANIFEST MANIFEST_OUT [--allow_uneven]
        one line per archive: NAME<TAB>folder<TAB>folder...  (folders relative to RUNS_DIR),
        and MANIFEST_OUT written from the same plan: {"runs": {run: {"archive",
        "finished_steps": {stage: step}}}, "written": ...}; exit 3 (nothing written) while a
        run group's runs are at different steps (a pack caught between their saves)
    python bench/window_archives.py check RUNS_DIR MANIFEST[,MANIFEST] RUN...
        exit 2 with one line when a run lacks a checkpoint that a manifest lists
    python bench/window_archives.py carried PAYLOAD_DIR
        the carried runs_*.tar.gz to unpack, in order: "named ARCHIVE" for those the carried
        manifest names (sorted), then "other ARCHIVE" (unpacked without overwriting: a window
        killed between two renames can leave a run's newest archive unnamed yet)
    python bench/window_archives.py budget OUT_DIR PAYLOAD_DIR
        one line: what the next window would carry (returned runs and cache, the data, the
        wheels, a tree allowance) against the 64 MiB that travels; WARNING when over

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
CHUNK_BYTES = int(os.environ.get("BMD_ARCHIVE_CHUNK_BYTES", 15 * 2**20))  # under the 16 MiB
# a returned file may hold (gzip barely shrinks floats); the tests lower it.
TRAVEL_BYTES = 64 * 2**20  # what a device call carries
TREE_ALLOWANCE = 4_500_000  # the working tree's share of it (3.97 MB on 2026-12-06)


class UnevenGroup(Exception):
  """A run group's runs hold different newest steps: a view between two runs' saves."""


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


def plan(runs_dir: str, allow_uneven: bool = False) -> dict[str, list[str]]:
  """{archive name: folders relative to runs_dir}, in a fixed order. Raises UnevenGroup when a
  group's runs are at different steps (unless allow_uneven): with one checkpoint kept, such a
  view has no step common to all runs, and the group could not resume from it."""
  archives: dict[str, list[str]] = {}
  for run in sorted(os.listdir(runs_dir)):
    if "_seed" in run and os.path.isdir(os.path.join(runs_dir, run, "checkpoints")):
      archives.setdefault(f"runs_{run.rsplit('_seed', 1)[0]}.tar.gz", []).append(run)
    elif os.path.isfile(os.path.join(runs_dir, run, TORCH_FILE)):
      archives.setdefault(f"runs_{re.sub(r'_s[0-9]+$', '', run)}.tar.gz", []).append(run)
  for group in _groups(runs_dir):
    steps = {run: finished_steps(os.path.join(runs_dir, group, run))
             for run in _group_runs(runs_dir, group)}
    if not allow_uneven and len({json.dumps(s, sort_keys=True) for s in steps.values()}) > 1:
      raise UnevenGroup(f"group {group}'s runs are at different steps: {steps}")
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


def manifest(runs_dir: str, archives: dict[str, list[str]], carried: str = "") -> dict:
  """The runs of `archives` (a plan) with their archive and finished steps. A run the carried
  manifest lists but runs_dir lacks (not trained in this window, its archive left behind)
  keeps its entry, so a later window still refuses to restart it."""
  runs = {}
  if carried and os.path.exists(carried):
    runs.update(json.load(open(carried))["runs"])
  for archive, folders in archives.items():
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


def carried_archives(payload: str) -> list[tuple[str, str]]:
  """[("named" or "other", archive path)]: the archives the carried manifest names first."""
  found = sorted(f for f in os.listdir(payload) if re.match(r"runs_.*\.tar\.gz$", f))
  named = set()
  if os.path.isfile(os.path.join(payload, "manifest.json")):
    named = {r.get("archive") for r in json.load(open(os.path.join(payload, "manifest.json")))
             ["runs"].values()}
  return ([("named", os.path.join(payload, f)) for f in found if f in named]
          + [("other", os.path.join(payload, f)) for f in found if f not in named])


def budget(out: str, payload: str) -> str:
  """What the next window carries if it continues from `out`, against TRAVEL_BYTES."""
  size = lambda folder, pattern: sum(os.path.getsize(os.path.join(folder, f))
                                     for f in os.listdir(folder) if re.match(pattern, f))
  runs = size(out, r"runs_.*\.tar\.gz$") + size(out, r"jax_cache\.tar\.gz$")
  data = size(payload, r"cifar10\.npz$")
  wheels = size(os.path.join(payload, "wheels"), ".") if os.path.isdir(
      os.path.join(payload, "wheels")) else 0
  total = runs + data + wheels + TREE_ALLOWANCE
  line = (f"the next window carries {total / 1e6:.1f} MB of {TRAVEL_BYTES / 1e6:.1f}: returned "
          f"runs and cache {runs / 1e6:.1f}, data {data / 1e6:.1f}, wheels {wheels / 1e6:.1f}, "
          f"tree ~{TREE_ALLOWANCE / 1e6:.1f}")
  if total > TRAVEL_BYTES:
    line = ("WARNING: " + line + "; over: leave jax_cache.tar.gz behind, or train fewer runs "
            "a group (docs/EXPERIMENT.md, 'Windows')")
  return line


if __name__ == "__main__":
  command, runs_dir, *rest = sys.argv[1:]
  if command == "plan":
    carried, manifest_out, *flags = rest
    try:
      archives = plan(runs_dir, allow_uneven="--allow_uneven" in flags)
    except UnevenGroup as e:
      print(f"window_archives.py: not packed yet: {e}", file=sys.stderr)
      sys.exit(3)
    with open(manifest_out, "w") as f:
      json.dump(manifest(runs_dir, archives, carried), f, indent=1)
    for name, folders in archives.items():
      print("\t".join([name, *folders]))
  elif command == "carried":
    for kind, path in carried_archives(runs_dir):
      print(kind, path)
  elif command == "budget":
    print(budget(runs_dir, rest[0]))
  elif command == "check":
    problem = missing_checkpoints(rest[0].split(","), runs_dir, rest[1:])
    if problem:
      print(f"window_archives.py: refused: {problem}", file=sys.stderr)
      sys.exit(2)
  else:
    sys.exit(f"window_archives.py: unknown command {command!r}: plan, check, carried or budget")
