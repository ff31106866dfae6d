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
# What travels: the working tree's tracked and untracked (not ignored) files (~3.9 MB), and the
# payload: the CIFAR-10 JPEGs, train and the whole test split, packed to 18,294,980 B
# (bench/jpeg_pack.py stores the 623-byte header all 60,000 share once: 55,250,913 B of files;
# 15,245,298 B train alone, 3,053,705 B test; measured 2026-12-06, see its docstring), the
# wheels (ml_collections and tensorboardX, 0.17 MB; grain's 4.4 MB with --with_grain, only for
# the grain input path, which gpu_run.sh does not use), and what a window returned to be
# continued: runs_<variant>.tar.gz (~2.2 MB a mid-stage run, ~4.4 MB a run in step 2),
# manifest.json, jax_cache.tar.gz (the first to leave when over): ~22.4 MB before any run, so
# ~44 MB, ~10 runs in step 2, stay for them. bench/gpu_run.sh's header gives the budget.
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

  # A pack of the old format (no header table) or with 10 test images a class as a stand-in is
  # packed again; so is one that does not load.
  if [[ -f $payload/cifar10.npz ]] && ! python3 -c 'import sys, numpy as np
z = np.load(sys.argv[1]); test = list(z["splits"]).index("test")
sys.exit(int("headers" not in z or (z["split"] == test).sum() < 10000))' \
      "$payload/cifar10.npz" 2>/dev/null; then
    echo "prepare_gpu_run.sh: $payload/cifar10.npz is of the old format or lacks the whole test" \
         "split: packing it again"
    rm "$payload/cifar10.npz"
  fi
  if [[ ! -f $payload/cifar10.npz ]]; then
    if [[ ! -d $data/train || ! -d $data/test ]]; then
      echo "prepare_gpu_run.sh: no CIFAR-10 JPEG folder at $data (train/<class>/*.jpg," \
           "test/<class>/*.jpg): pass its path or set BMD_CIFAR10_DIR" >&2
      exit 1
    fi
    rm -f "$payload/cifar10.npz.part"  # what an interrupted pack left: it would travel too
    python3 bench/jpeg_pack.py pack "$data" "$payload/cifar10.npz"
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
