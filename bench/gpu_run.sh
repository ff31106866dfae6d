#!/usr/bin/env bash
# One prepared command for a GPU window (issues 14 and 26): training up to a stop time, and
# nothing lost when the window is cut short.
#
#   bench/prepare_gpu_run.sh                 # once, on a CPU machine with network
#   bench/gpu_run.sh [--out DIR] [--epochs auto|N] [--seeds 0,1] [--variants bd_bnn,plain_binary]
#                    [--group WAVE,seeds=A-B  (issue 27's runs side by side in one program,
#                                              with --epochs N; docs/EXPERIMENT.md)]
#                    [--minutes M | --window_s 540 | --stop_at UNIX_S] [--margin_s 30]
#                    [--train_only] [--restart_from_scratch] [--payload DIR] [--dtype float32]
#                    [-- more bench/gpu_train.py flags, e.g. --checkpoint_every_epochs=5]
#                    [--torch_irnet SEEDS (A-B or A,B: the PyTorch reference of IR-Net's
#                                          one-stage ResNet-20, bench/torch_irnet_train.py, one
#                                          process a seed, side by side; with --epochs N)]
#   bench/gpu_run.sh --dry_run ...           # tiny sizes on the CPU (tests/test_gpu_run.py)
#   bench/gpu_run.sh --scan_bench ...        # also time steps per dispatch (printed to log.txt)
#   bench/gpu_run.sh --group_bench ...       # also time K = 1, 4, 8, 16 runs of ResNet-20 in one
#                                            # program (bench/run_group_throughput.py; log.txt)
#
# Writes to --out (default $OUT; at most 8 files come back from the machine, 16 MiB each):
#   gpu_check.json        one BD-BNN train step on the GPU against the CPU at 'highest'
#                         matmul precision (bench/gpu_check.py)            } not with
#   train_step.json       the train and eval steps against the PyTorch twin } --train_only
#   train_step_bf16.json  and bmd_jax's in bfloat16 (bench/train_step.py)  }
#   records.json          one record per run (bench/gpu_train.py), written when training ends
#   runs_<variant>.tar.gz the runs' workdirs (their newest finished checkpoints, metrics), one
#                         file per variant (runs_<group>.<i>.tar.gz with --group: the group's
#                         runs split into files of at most 15 MiB, bench/window_archives.py),
#                         and
#   manifest.json         each run's finished steps in them: both rewritten (write, then
#                         rename) as soon as a new checkpoint is finished, so a window killed at
#                         any moment returns its last checkpoint
#   jax_cache.tar.gz      the compilation cache, with --train_only (8 files otherwise), when
#                         under 16 MiB: carried back, the next window does not compile again
#   log.txt               everything printed
#
# To continue, put what came back (runs_*.tar.gz, manifest.json, jax_cache.tar.gz) in
# bench/gpu_payload/ before the call that carries it starts, and rerun with the same --epochs N
# (their records' epochs_per_step), usually with --train_only. Commit manifest.json as
# bench/gpu_manifest.json too: the tracked tree always travels, so a window whose payload did
# not arrive refuses in its first seconds (one line) instead of restarting runs from scratch
# (2026-11-27's window 2 did); --restart_from_scratch allows that on purpose.
#
# Training stops (saves at a dispatch boundary, then packs) before the stop time: --stop_at, or
# the command's start + --minutes (or --window_s, the whole command's target, kept inside the
# device call's 600 s limit) - --margin_s (the last save, packing and the return). --epochs auto
# (the default) picks the longest schedule that every run finishes by then, from the measured
# BD-BNN step time (bench/gpu_train.py --epochs=0).
#
# The budget of what crosses from one window to the next (all that travels is under 64 MiB =
# 67,108,864 B; bench/prepare_gpu_run.sh adds it up and names the largest items):
#   the working tree ~4 MB, wheels 0.17 MB, the CIFAR-10 JPEGs, train and the whole test split,
#   18.3 MB (bench/jpeg_pack.py stores the 623-byte header they share once), so every window
#   evaluates the whole split (learning curves, the final and the best epoch); ~44 MB is left.
#   Per run, a mid-stage train state is ~2.2 MB (params, batch statistics, momentum) and a
#   finished stage's weights ~1.1 MB (params + batch statistics): a run in step 2 carries step
#   1's last checkpoint and step 2's (~4.4 MB), so ~10 runs in mid-step-2 fit beside the data
#   (a --group of 7 from anywhere, of 14 while in step 1: docs/EXPERIMENT.md, "Windows").
#   Stage-end weights are committed with their records, and float weights leave the working
#   tree once the next stage has finished from them (history keeps them); small packed
#   exports of finished runs stay. A stage cut short continues from its mid-stage state in the
#   same window where possible, else in the next, carried the same way. A window gives ~9 min
#   of training: choose the runs (--group, or --seeds and --variants) so that a stage of each
#   finishes in it. The compilation cache is carried only where it fits: it is the first thing
#   to leave.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
payload=
out=${OUT:-/tmp/gpu_run_out}
epochs=auto seeds=0 variants=bd_bnn,plain_binary window=540 margin=30 stop_at=0 dtype=float32
dry=0 scan_bench=0 group_bench=0 train_only=0 restart=0 group= torch_seeds=
while (( $# )); do
  case $1 in
    --dry_run) dry=1 ;;
    --scan_bench) scan_bench=1 ;;  # + bench/steps_per_dispatch.py (lax.scan), ~1 min more
    --group_bench) group_bench=1 ;;  # + bench/run_group_throughput.py, a few minutes more
    --train_only) train_only=1 ;;  # continuation windows: no checks, no timings
    --restart_from_scratch) restart=1 ;;
    --out) out=$2; shift ;;
    --payload) payload=$2; shift ;;
    --epochs) epochs=$2; shift ;;
    --seeds) seeds=$2; shift ;;
    --variants) variants=$2; shift ;;
    --torch_irnet) torch_seeds=$2; shift ;;
    --group) group=$2; shift ;;  # a run group of the experiment (cifar10_experiment's argument)
    --window_s) window=$2; shift ;;
    --minutes) window=$(python3 -c "print(int(float('$2') * 60))"); shift ;;
    --margin_s) margin=$2; shift ;;
    --stop_at) stop_at=$2; shift ;;
    --dtype) dtype=$2; shift ;;
    --) shift; break ;;
    *) echo "gpu_run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
started=$(date +%s)
(( stop_at > 0 )) || stop_at=$(( started + window - margin ))
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
trap 'rm -rf "$work"' EXIT
extra_train_args=("$@")
# A dry run reads no real payload unless given one: its tiny models cannot resume real runs.
if [[ -z $payload ]]; then
  if (( dry )); then payload=$work/payload; else payload=$repo/bench/gpu_payload; fi
fi
mkdir -p "$payload"
payload=$(cd "$payload" && pwd)
exec > >(tee "$out/log.txt") 2>&1
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
stamp() { echo "== $(( $(date +%s) - started )) s: $*"; }
status=0
part() {  # a failed part is reported and the others still run; the exit status says it
  "$@" || { echo "FAILED ($?): $*"; status=1; }
}
if [[ $epochs == auto ]] && (( train_only )); then
  echo "gpu_run.sh: --train_only measures no step time: pass --epochs N" >&2
  exit 2
fi
if [[ $epochs == auto && ( -n $group || -n $torch_seeds ) ]]; then
  echo "gpu_run.sh: --group and --torch_irnet train the plan's schedule: pass --epochs N" >&2
  exit 2
fi
if [[ -n $group && -n $torch_seeds ]]; then
  echo "gpu_run.sh: one window trains --group or --torch_irnet, not both" >&2
  exit 2
fi
# The PyTorch reference's runs: irnet_torch_s<seed> (compare groups them as one variant).
torch_runs=()
if [[ -n $torch_seeds ]]; then
  if [[ $torch_seeds =~ ^([0-9]+)-([0-9]+)$ ]]; then
    torch_seeds=$(seq -s, "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
  fi
  for seed in ${torch_seeds//,/ }; do
    [[ $seed =~ ^[0-9]+$ ]] || { echo "gpu_run.sh: --torch_irnet takes seeds as A-B or" \
                                      "A,B,...; got $torch_seeds" >&2; exit 2; }
    torch_runs+=("irnet_torch_s$seed")
  done
  (( ${#torch_runs[@]} )) || { echo "gpu_run.sh: --torch_irnet $torch_seeds names no seed" >&2
                               exit 2; }
fi
if [[ $epochs == auto ]] && ls "$payload"/runs_*.tar.gz >/dev/null 2>&1; then
  echo "gpu_run.sh: continuing runs need their own schedule: pass --epochs N (their records'" \
       "epochs_per_step)" >&2
  exit 2
fi

stamp "python $(python3 --version 2>&1), work folder $work, output $out, payload $payload," \
  "stop at $(date -u -d "@$stop_at" +%H:%M:%S) UTC ($(( stop_at - started )) s from the start)"
# What the machine lacks, from the prepared wheels (no network there).
for pair in ml_collections:ml_collections tensorboardX:tensorboardX grain:grain; do
  module=${pair%%:*} package=${pair##*:}
  if ! python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --find-links "$payload/wheels" "$package" \
      $( [[ $package == grain ]] && echo array_record cloudpickle portpicker ) \
      || echo "could not install $package (the device path does not need grain)"
  fi
done

# The carried runs first, and the manifests' check, so a window that would restart a run by
# mistake is refused in its first seconds, before the checks and timings.
runs=$work/runs
mkdir -p "$runs"
# The archives the carried manifest names first; any other (a window killed between two
# renames can leave a run's newest archive unnamed yet) only adds what they lack.
while read -r kind previous; do
  [[ -n $kind ]] || continue
  keep=(); [[ $kind == named ]] || keep=(--skip-old-files)
  tar -xzf "$previous" -C "$runs" "${keep[@]}" || {
    echo "gpu_run.sh: $previous cannot be unpacked (damaged or cut short): carry it again as" \
         "the window returned it; nothing was trained" >&2
    exit 1
  }
  stamp "continuing $previous$([[ $kind == named ]] || echo ", which the carried manifest" \
        "does not name: unpacked without overwriting")"
done <<< "$(python3 bench/window_archives.py carried "$payload")"
# The tracked manifest too (the tree always travels), but not for a dry run's tiny runs.
manifests=$payload/manifest.json
(( dry )) || manifests+=,$repo/bench/gpu_manifest.json
run_args=(--data_dir="$work/cifar10-jpeg" --runs_dir="$runs" --manifests="$manifests")
if [[ -n $group ]]; then
  run_args+=(--group="$group")
else
  run_args+=(--seeds="$seeds" --variants="$variants")
fi
(( restart )) && run_args+=(--restart_from_scratch)
(( dry )) && run_args+=(--blocks_per_stage=1)  # the check looks in the dry run's own folders
if (( ${#torch_runs[@]} )); then
  python3 bench/window_archives.py check "$runs" "$manifests" "${torch_runs[@]}" \
    || { (( restart )) || exit 2; }
else
  python3 bench/gpu_train.py --check_only "${run_args[@]}" || exit 2
fi
# The compilation cache: carried from the last window (when it fitted), returned below. A
# cache the caller set wins (the test session's: the dry run then reuses what other tests
# compiled), and is not returned.
own_cache=0
if [[ -z ${JAX_COMPILATION_CACHE_DIR:-} ]]; then
  own_cache=1
  export JAX_COMPILATION_CACHE_DIR=$work/jax_cache
  mkdir -p "$JAX_COMPILATION_CACHE_DIR"
  if [[ -f $payload/jax_cache.tar.gz ]]; then
    tar -xzf "$payload/jax_cache.tar.gz" -C "$JAX_COMPILATION_CACHE_DIR"
    stamp "compilation cache carried: $(ls "$JAX_COMPILATION_CACHE_DIR" | wc -l) programs"
  fi
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}

# --- returning each checkpoint as soon as it is finished -----------------------------------
# A loop in this script, not a thread in gpu_train.py: it packs whatever Python does (a crash
# in XLA, an out-of-memory kill, a hang), shares no interpreter lock with the training, and
# still packs after gpu_train.py has exited. It polls every 2 s: a checkpoint comes every
# --checkpoint_every_minutes at most, so the poll costs nothing that matters.
signature() {  # the finished checkpoints' files, names, sizes and times
  (cd "$runs" && find . -type f \( -path '*/checkpoints/*' -o -name checkpoint.json \) \
     ! -path '*orbax-checkpoint-tmp*' -printf '%P %s %T@\n' 2>/dev/null | sort | md5sum) || true
}
# The archives and the manifest ({"runs": {run: {"archive", "finished_steps"}}}, as
# gpu_train.py reads it), from one plan of bench/window_archives.py, which splits a run group
# over archives of at most 15 MiB each. They are written three folders down in $out, from
# where nothing comes back from the machine, then renamed into place: new names first, then
# the archives they replace, then the manifest, so a kill between two renames leaves every run
# in some archive.
packed= warned_files=0
pack() {  # archives and manifest of one unchanged view of the checkpoints, renamed into $out
  local before after name dirs plan names=() parts=$out/.parts/p$BASHPID/w files
  before=$(signature)
  [[ $before == "$packed" ]] && return 0
  rm -rf "$parts" && mkdir -p "$parts"
  plan=$(python3 bench/window_archives.py plan "$runs" "$payload/manifest.json" \
         "$parts/manifest.json" "$@") || return 1
  while IFS=$'\t' read -r name dirs; do
    [[ -n $name ]] || continue  # no runs yet
    # tar says 1 when a file (metrics.jsonl) grew while read: the checkpoints are checked below.
    tar -czf "$parts/$name" -C "$runs" --exclude=tensorboard --exclude=run.lock \
      --exclude='*orbax-checkpoint-tmp*' --exclude='*.pt.tmp*' $dirs 2>/dev/null \
      || (( $? == 1 )) || return 1
    names+=("$name")
  done <<< "$plan"
  after=$(signature)
  if [[ $after != "$before" ]]; then  # a save finished or a step was removed meanwhile
    rm -rf "$parts"
    return 1
  fi
  for name in "${names[@]}"; do [[ -e $out/$name ]] || mv "$parts/$name" "$out/$name"; done
  for name in "${names[@]}"; do
    [[ -e $parts/$name ]] && mv -f "$parts/$name" "$out/$name"
    (( $(stat -c %s "$out/$name") < 16 * 1048576 )) \
      || echo "WARNING: $name is over 16 MiB and will not come back: train fewer runs"
  done
  mv -f "$parts/manifest.json" "$out/manifest.json"
  # An archive of an earlier view that this one no longer names (a group's runs regrouped as
  # they grew) would carry stale checkpoints: gone once the manifest no longer points to it.
  for name in "$out"/runs_*.tar.gz; do
    [[ " ${names[*]} " == *" $(basename "$name") "* ]] || rm -f "$name"
  done
  rm -rf "$parts"
  files=$(find "$out" -maxdepth 1 -type f | wc -l)
  if (( files > 8 && ! warned_files )); then
    echo "WARNING: $out holds $files files; 8 come back from the machine: run with" \
         "--train_only, or fewer runs"
    warned_files=1
  fi
  packed=$before
}
pack || true  # the carried runs, returned even by a window that dies before its first save
# The packer: on TERM it ends after the tar or sleep it is in (a killed subshell would leave
# its tar writing), and `wait` below waits for that.
( trap 'exit 0' TERM; while sleep 2; do pack || true; done ) &
packer=$!
trap 'kill $packer 2>/dev/null || true; rm -rf "$work"' EXIT


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
  python3 - "$data" <<'PY'
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
PY
  check_args=(--batch=8 --blocks_per_stage=1)
  bench_args=(--quick --batch=8 --variants=full,eval --torch_device=cpu --blocks_per_stage=1)
  train_args=(--num_train_steps="${BMD_DRY_STEPS:-3}" --batch_size=8 --blocks_per_stage=1)
else
  if [[ ! -f $payload/cifar10.npz ]]; then
    echo "gpu_run.sh: no $payload/cifar10.npz: run bench/prepare_gpu_run.sh first (on a" \
         "machine with the CIFAR-10 JPEG folder and network) and carry bench/gpu_payload" >&2
    exit 1
  fi
  python3 bench/jpeg_pack.py unpack "$payload/cifar10.npz" "$data"
  check_args=()
  bench_args=(--torch_device=cuda --variants=full,ce,eval --rounds=3 --steps=50)
  train_args=()
fi
train_args+=("${extra_train_args[@]}")
stamp "data ready"

if (( ! train_only )); then
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
fi
if (( group_bench )); then  # with --train_only too: the first group window measures its rate
  part python3 bench/run_group_throughput.py --recipe=cifar10 --rounds=3 --json=- \
    $( (( dry )) && echo --runs=1,2 --steps=2 --batch=8 --blocks=1 --rounds=1 \
       || echo --runs=1,4,8,16 --steps=100 --batch=128 --steps_per_dispatch=0 )
  stamp "group timings done"
fi

schedule=(--epochs="$epochs")
if [[ $epochs == auto ]]; then
  step_s=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["results"]["resnet20"]["jax"]["variants"]["full"]["median_s"])' \
    "$out/train_step.json") \
    || { echo "gpu_run.sh: no measured step time: pass --epochs N" >&2; exit 1; }
  schedule=(--epochs=0 --step_seconds="$step_s")
fi
stamp "training for $(( stop_at - $(date +%s) )) s: ${schedule[*]}"
if (( ${#torch_runs[@]} )); then
  if (( dry )); then
    torch_args=(--device=cpu --batch_size=8 --eval_batch_size=8 --blocks=1 --threads=1)
  else
    torch_args=(--device=cuda)
  fi
  pids=()
  for run in "${torch_runs[@]}"; do  # side by side: eager PyTorch waits on the host
    python3 bench/torch_irnet_train.py --data_dir="$data" --workdir="$runs/$run" \
      --epochs="$epochs" --seed="${run##*_s}" --stop_at="$stop_at" \
      --cache_dir="$work/torch_cache" "${torch_args[@]}" > >(sed -u "s/^/[$run] /") 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "FAILED ($?): ${torch_runs[$i]}"; status=1; }
  done
  part python3 - "$runs" "$out/records.json" "${torch_runs[@]}" <<'PY'
import json, os, sys
records = []
for run in sys.argv[3:]:  # each run's last evaluation record, as bench/gpu_train.py's records
  folder = os.path.join(sys.argv[1], run)
  if not os.path.exists(os.path.join(folder, "config.json")):  # it never started
    records.append({"run": run, "variant": "irnet_torch", "complete": False})
    continue
  config = json.load(open(os.path.join(folder, "config.json")))
  metrics = os.path.join(folder, "metrics.jsonl")
  evals = [r for r in map(json.loads, open(metrics)) if "eval/accuracy" in r
           ] if os.path.exists(metrics) else []
  last = evals[-1] if evals else {}
  records.append({"run": run, "variant": "irnet_torch", "seed": config["seed"],
                  "framework": "torch", "epochs": config["num_epochs"],
                  "complete": last.get("step") == config["num_train_steps"],
                  "top1": last.get("eval/accuracy"), "best_top1": last.get("eval/best_accuracy"),
                  "best_epoch": last.get("eval/best_epoch"),
                  "top1_drop_last": last.get("eval/accuracy_drop_last"),
                  "epochs_done": last.get("epoch", 0)})
json.dump(records, open(sys.argv[2], "w"), indent=1)
print(json.dumps(records))
PY
else
  part python3 bench/gpu_train.py "${run_args[@]}" "${schedule[@]}" --stop_at="$stop_at" \
    --dtype="$dtype" --records="$out/records.json" "${train_args[@]}"
fi
stamp "training done"
kill $packer 2>/dev/null || true
wait $packer 2>/dev/null || true
packed= tries=0
until pack; do  # nothing writes any more: the first try succeeds, unless a crash cut a
  (( ++tries < 5 )) && { sleep 1; continue; }  # group's saves short: then the view as it is
  echo "WARNING: a run group's runs are at different steps; packed as they are"
  pack --allow_uneven || echo "WARNING: the last pack failed; $out holds the one before"
  break
done
rm -rf "$out/.parts"
if (( own_cache && train_only )); then
  tar -czf "$work/jax_cache.tar.gz" -C "$JAX_COMPILATION_CACHE_DIR" .
  if (( $(stat -c %s "$work/jax_cache.tar.gz") < 16 * 1048576 )); then
    mv "$work/jax_cache.tar.gz" "$out/jax_cache.tar.gz"
  else
    echo "the compilation cache is over 16 MiB: not returned"
  fi
fi
ls -l "$out"
python3 bench/window_archives.py budget "$out" "$payload" || true
stamp "finished (status $status)"
exit $status
