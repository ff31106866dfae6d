#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node (it drives all the node's GPUs)
# or one per GPU, started by srun; jax.distributed reads the job's layout from SLURM.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/gpu_slurm.sh \
#       --config=imagenet --workdir=/shared/runs/imnet [--config.FIELD=VALUE ...]
#   PER_GPU=1 sbatch --nodes=4 --gpus-per-node=8 launch/gpu_slurm.sh ...   # 32 processes
#
# WORKDIR (in --workdir) and the data (--config.data_dir) must be on storage every node sees.
# Only process 0 writes metrics; every process takes part in saving checkpoints. The same
# sbatch line resumes from the newest checkpoint.
#SBATCH --job-name=bmd_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

if [[ ${PER_GPU:-0} == 1 ]]; then
  gpus=${SLURM_GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
  gpus=${gpus##*:}  # "a100:8" -> 8
  tasks=(--ntasks-per-node="$gpus" --gpus-per-task=1)
else
  tasks=(--ntasks-per-node=1)
fi

# The first node hosts the coordinator; explicit flags make the layout visible in the logs
# (jax.distributed could also detect it from SLURM's environment).
coordinator=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
port=${COORDINATOR_PORT:-12355}
srun "${tasks[@]}" --kill-on-bad-exit=1 bash -c '
  exec python -m bmd_jax.main --coordinator_address='"$coordinator:$port"' \
    --num_processes=$SLURM_NTASKS --process_id=$SLURM_PROCID "$@"' bash "$@"
