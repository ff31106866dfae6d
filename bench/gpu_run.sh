#!/usr/bin/env bash
# One prepared command for a short GPU window (issue 14): about 9 minutes with the defaults.
#
#   bench/prepare_gpu_run.sh                 # once, on a CPU machine with network
#   bench/gpu_run.sh [--out DIR] [--epochs auto|N] [--seeds 0] [--budget_s auto|S]
#                    [--window_s 540] [--dtype float32]
#   bench/gpu_run.sh --dry_run               # tiny sizes on the CPU (tests/test_gpu_run.py)
#   bench/gpu_run.sh --scan_bench ...        # also time steps per dispatch (printed to log.txt)
#
# In order, writing to --out (default $OUT; at most 8 files come back from the machine):
#   gpu_check.json        one BD-BNN train step on the GPU against the CPU at 'highest'
#                         matmul precision (bench/gpu_check.py)
#   train_step.json       the train and eval steps against the PyTorch twin on the same card,
#   train_step_bf16.json  and bmd_jax's in bfloat16 (bench/train_step.py)
#   records.json          binary ResNet-20 on CIFAR-10, BD-BNN and the plain binary baseline,
#                         one record per run (bench/gpu_train.py)
#   runs_<variant>.tar.gz the runs' workdirs (latest checkpoints, metrics), one file per
#                         variant (each under 16 MiB): put them in bench/gpu_payload/ and rerun
#                         with the same flags to continue the schedule in the next window
#                         (~4.3 MB a run: with the data, two runs fit the 64 MiB that travel;
#                         prepare_gpu_run.sh prints the total)
#   log.txt               everything printed
# --budget_s auto (the default) gives training what is left of --window_s seconds (the whole
# command's target, kept inside the device call's 600 s limit) after the checks and timings;
# --epochs auto (the default) then picks the longest schedule that every run finishes in that
# budget, from the measured BD-BNN step time (bench/gpu_train.py --epochs=0). A continued run
# must be given the same --epochs N as its record's epochs_per_step, and its runs_*.tar.gz must
# be in bench/gpu_payload/ before the call that carries it starts (2026-11-27's second window
# copied them as the call began, they did not travel, and both runs restarted from scratch).
# Needs bench/gpu_payload/ (wheels and the packed CIFAR-10 JPEGs) from prepare_gpu_run.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
payload=$repo/bench/gpu_payload
out=${OUT:-/tmp/gpu_run_out}
epochs=auto seeds=0 budget=auto window=540 dtype=float32 dry=0 scan_bench=0
while (( $# )); do
  case $1 in
    --dry_run) dry=1 ;;
    --scan_bench) scan_bench=1 ;;  # + bench/steps_per_dispatch.py (lax.scan), ~1 min more
    --out) out=$2; shift ;;
    --epochs) epochs=$2; shift ;;
    --seeds) seeds=$2; shift ;;
    --budget_s) budget=$2; shift ;;
    --window_s) window=$2; shift ;;
    --dtype) dtype=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
work=$(mktemp -d /tmp/gpu_run.XXXXXX)
exec > >(tee "$out/log.txt") 2>&1
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
# The benchmark's rounds run in fresh processes: compile each program once per window. A cache
# the caller set wins (the test session's: the dry run then reuses what other tests compiled).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$work/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}
started=$(date +%s)
stamp() { echo "== $(( $(date +%s) - started )) s: $*"; }
status=0
part() {  # a failed part is reported and the others still run; the exit status says it
  "$@" || { echo "FAILED ($?): $*"; status=1; }
}

stamp "python $(python3 --version 2>&1), work folder $work, output $out"
# What the machine lacks, from the prepared wheels (no network there).
for pair in ml_collections:ml_collections tensorboardX:tensorboardX grain:grain; do
  module=${pair%%:*} package=${pair##*:}
  if ! python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --find-links "$payload/wheels" "$package" \
      $( [[ $package == grain ]] && echo array_record cloudpickle portpicker ) \
      || echo "could not install $package (the device path does not need grain)"
  fi
done

python3 -c 'from importlib import metadata as m
def version(p):
  try:
    return m.version(p)
  except m.PackageNotFoundError:
    return "absent"
print(", ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", "flax", "optax",
      "orbax-checkpoint", "chex", "numpy", "torch")))' || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
data=$work/cifar10-jpeg
if (( dry )); then
  export JAX_PLATFORMS=cpu
  python3 - "$data" <<'EOF'
import os, sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, count in (("train", 4), ("test", 2)):
  for c in range(10):
    os.makedirs(f"{sys.argv[1]}/{split}/class{c}", exist_ok=True)
    for i in range(count):
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
          f"{sys.argv[1]}/{split}/class{c}/{i}.jpg")
EOF
  check_args=(--batch=8 --blocks_per_stage=1)
  bench_args=(--quick --batch=8 --variants=full,eval --torch_device=cpu --blocks_per_stage=1)
  train_args=(--num_train_steps=3 --batch_size=8 --eval_every_epochs=1 --blocks_per_stage=1)
  budget=900
else
  if [[ ! -f $payload/cifar10.npz ]]; then
    echo "no $payload/cifar10.npz: run bench/prepare_gpu_run.sh first (on a machine with the" \
         "CIFAR-10 JPEG folder and network) and carry bench/gpu_payload" >&2
    exit 1
  fi
  python3 bench/jpeg_pack.py unpack "$payload/cifar10.npz" "$data" || exit 1
  check_args=()
  bench_args=(--torch_device=cuda --variants=full,ce,eval --rounds=3 --steps=50)
  train_args=()
fi
stamp "data ready"

part python3 bench/gpu_check.py --out="$out/gpu_check.json" "${check_args[@]}"
stamp "GPU-CPU check done"
part python3 bench/train_step.py --json="$out/train_step.json" "${bench_args[@]}"
part python3 bench/train_step.py --json="$out/train_step_bf16.json" --frameworks=jax \
  --dtype=bfloat16 "${bench_args[@]}" --variants=full,eval --rounds=1
if (( scan_bench )); then
  part python3 bench/steps_per_dispatch.py --dtype="$dtype" \
    $( (( dry )) && echo --scan=1,2 --steps=4 --batch=8 --examples=256 --blocks_per_stage=1 )
fi
stamp "timings done"

runs=$work/runs
mkdir -p "$runs"
if (( ! dry )); then
  for previous in "$payload"/runs_*.tar.gz; do
    [[ -f $previous ]] && tar -xzf "$previous" -C "$runs" && stamp "continuing $previous"
  done
fi
if [[ $budget == auto ]]; then
  # Left of the window, less what follows the training: decoding the JPEGs (~15 s), the
  # archives and a margin.
  budget=$(( window - ($(date +%s) - started) - 60 ))
  (( budget > 30 )) || budget=30
fi
schedule=(--epochs="$epochs")
if [[ $epochs == auto ]]; then
  if ls "$payload"/runs_*.tar.gz >/dev/null 2>&1 && (( ! dry )); then
    echo "continuing runs need their own schedule: pass --epochs N (their records'" \
         "epochs_per_step)" >&2
    exit 2
  fi
  step_s=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["results"]["resnet20"]["jax"]["variants"]["full"]["median_s"])' \
    "$out/train_step.json") || { echo "no measured step time: pass --epochs N" >&2; exit 1; }
  schedule=(--epochs=0 --step_seconds="$step_s")
fi
stamp "training for ${budget} s: ${schedule[*]}"
part python3 bench/gpu_train.py --data_dir="$data" --runs_dir="$runs" "${schedule[@]}" \
  --seeds="$seeds" --budget_s="$budget" --dtype="$dtype" --records="$out/records.json" \
  "${train_args[@]}"
stamp "training done"
for variant in bd_bnn plain_binary; do
  dirs=$(cd "$runs" && ls -d ${variant}_seed* 2>/dev/null)
  [[ -n $dirs ]] && part tar -czf "$out/runs_$variant.tar.gz" -C "$runs" \
    --exclude=tensorboard $dirs
done
ls -l "$out"
stamp "finished (status $status)"
exit $status
