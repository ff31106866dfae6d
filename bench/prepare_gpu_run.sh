#!/usr/bin/env bash
# Gathers what bench/gpu_run.sh needs on the offline GPU machine into bench/gpu_payload/
# (git-ignored, never committed, carried to the machine): the wheels it lacks (Python 3.12,
# manylinux) and the CIFAR-10 JPEG bytes packed into one file; then adds up all that travels
# and fails, naming the largest items, when it is over 64 MiB (67,108,864 B).
#
#   bench/prepare_gpu_run.sh [--with_grain] [--check_only] [--payload DIR] [CIFAR10_JPEG_ROOT]
#
# CIFAR10_JPEG_ROOT defaults to $BMD_CIFAR10_DIR, else ../shared/data/cifar10-jpeg beside the
# repository. --check_only downloads and packs nothing: it only adds up what would travel (run
# it after putting a window's returned archives in bench/gpu_payload/).
#
# What travels: the working tree's tracked and untracked (not ignored) files, and the payload:
# the train JPEGs (46.6 MB) with the first 10 test images of each class as a stand-in eval split
# (the whole test split, 9.3 MB more, stays home: bench/evaluate_runs.py evaluates the returned
# runs), the wheels (ml_collections and tensorboardX, 0.17 MB; grain's 4.4 MB with --with_grain,
# only for the grain input path, which gpu_run.sh does not use), and what a window returned to
# be continued: runs_<variant>.tar.gz (~2.2 MB a mid-stage run, ~4.4 MB a run in step 2),
# manifest.json, jax_cache.tar.gz (the first to leave when over). bench/gpu_run.sh's header
# gives the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
with_grain=0 check_only=0 payload=bench/gpu_payload
while (( $# )); do
  case $1 in
    --with_grain) with_grain=1 ;;
    --check_only) check_only=1 ;;
    --payload) payload=$2; shift ;;
    -*) echo "prepare_gpu_run.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
data="${1:-${BMD_CIFAR10_DIR:-$repo/../shared/data/cifar10-jpeg}}"
# The device tool's limit; a test lowers it.
limit=${BMD_TRAVEL_LIMIT_BYTES:-67108864}

if (( ! check_only )); then
  mkdir -p "$payload/wheels"
  # What the GPU machine lacks (it has jax, flax, optax, orbax, chex, absl, numpy, protobuf,
  # PyYAML, etils). --no-deps: the dependencies would pull jax and numpy again.
  wheels=(ml_collections==1.1.0 tensorboardX==2.6.5)
  if (( with_grain )); then
    wheels+=(grain==0.2.18 array_record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0)
  else
    rm -f "$payload"/wheels/{grain,array_record,cloudpickle,portpicker}-*.whl
  fi
  pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$payload/wheels" "${wheels[@]}"

  # An older pack held the whole test split: packed again without it.
  if [[ -f $payload/cifar10.npz ]] && ! python3 -c 'import sys, numpy as np
sys.exit(int((np.load(sys.argv[1])["split"] == 1).sum() > 100))' "$payload/cifar10.npz"; then
    rm "$payload/cifar10.npz"
  fi
  if [[ ! -f $payload/cifar10.npz ]]; then
    if [[ ! -d $data/train || ! -d $data/test ]]; then
      echo "prepare_gpu_run.sh: no CIFAR-10 JPEG folder at $data (train/<class>/*.jpg," \
           "test/<class>/*.jpg): pass its path or set BMD_CIFAR10_DIR" >&2
      exit 1
    fi
    # train/ whole, test/ as its first 10 images a class: links in a folder jpeg_pack reads.
    view=$(mktemp -d)
    ln -s "$(cd "$data" && pwd)/train" "$view/train"
    for class in "$data"/test/*/; do
      name=$(basename "$class")
      mkdir -p "$view/test/$name"
      ls "$class" | sort | head -10 | while read -r file; do
        ln -s "$(cd "$class" && pwd)/$file" "$view/test/$name/$file"
      done
    done
    python3 bench/jpeg_pack.py pack "$view" "$payload/cifar10.npz"
    rm -rf "$view"
  fi
fi

# Everything that travels: git's tracked (still present) and untracked-not-ignored files, and
# the carried payload; the largest named when over.
listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
git ls-files -z --cached --others --exclude-standard > "$listing"
python3 - "$listing" "$payload" "$limit" <<'PY'
import os, sys
listing, payload, limit = sys.argv[1], os.path.normpath(sys.argv[2]), int(sys.argv[3])
files = {p: os.path.getsize(p) for p in open(listing).read().split("\0")
         if p and os.path.isfile(p) and not os.path.abspath(p).startswith(
             os.path.abspath(payload) + os.sep)}
tree = sum(files.values())
for folder, _, names in os.walk(payload):
  for name in names:
    path = os.path.join(folder, name)
    files[path] = os.path.getsize(path)
total = sum(files.values())
print(f"working tree {tree} B + payload {total - tree} B = {total} B "
      f"({total / 2**20:.1f} MiB of {limit / 2**20:.1f} MiB)")
largest = sorted(files.items(), key=lambda item: -item[1])[:8]
if total > limit:
  print(f"prepare_gpu_run.sh: what travels is {total - limit} B over the {limit} B limit; the "
        "largest: " + ", ".join(f"{p} ({s} B)" for p, s in largest), file=sys.stderr)
  sys.exit(1)
for path, size in largest:
  print(f"{size:>10} {path}")
PY
