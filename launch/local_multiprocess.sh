#!/usr/bin/env bash
# Several processes of one training command on this machine, joined by jax.distributed on
# localhost: a rehearsal of a multi-host run (the tests use it), or one process per GPU.
#
#   launch/local_multiprocess.sh NUM_PROCESSES [DEVICES_PER_PROCESS] -- \
#       python -m bmd_jax.main --config=default --workdir=runs/mp
#
# Each process gets --coordinator_address=localhost:PORT (a free port) --num_processes=N
# --process_id=I appended. DEVICES_PER_PROCESS > 0 simulates that many CPU devices per
# process (XLA_FLAGS=--xla_force_host_platform_device_count) and hides GPUs; 0 (default)
# keeps the platform's devices (on a GPU machine, set CUDA_VISIBLE_DEVICES per process
# yourself, or use one process for all GPUs). Process 0's output goes to the console, the
# others' to $LOG_DIR/process_I.log (default: a temporary folder). If one process fails,
# the others are stopped; the exit status is the first failure's.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
num_processes=$1; shift
devices_per_process=0
if [[ $1 != "--" ]]; then devices_per_process=$1; shift; fi
[[ $1 == "--" ]] || { echo "expected -- before the command" >&2; exit 2; }
shift

port=${COORDINATOR_PORT:-$(python -c 'import portpicker; print(portpicker.pick_unused_port())')}
log_dir=${LOG_DIR:-$(mktemp -d -t bmd_jax_mp.XXXXXX)}
mkdir -p "$log_dir"

if [[ $devices_per_process -gt 0 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices_per_process}"
  export JAX_PLATFORMS=cpu
fi

pids=()
stop_all() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_all INT TERM

for ((i = 0; i < num_processes; i++)); do
  args=("$@" "--coordinator_address=localhost:${port}" "--num_processes=${num_processes}"
        "--process_id=${i}")
  if [[ $i -eq 0 ]]; then
    "${args[@]}" &
  else
    "${args[@]}" >"${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=($!)
done

status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    code=$?
    if [[ $status -eq 0 ]]; then
      status=$code
      echo "process $i failed (exit $code); stopping the others. Logs: $log_dir" >&2
      stop_all
    fi
  fi
done
exit $status
