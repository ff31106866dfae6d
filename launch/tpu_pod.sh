#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice: the same command on all hosts
# (gcloud's --worker=all); jax.distributed finds the coordinator and the process ids itself.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b PROJECT=my-project \
#   DATA_DIR=gs://my-bucket/tensorflow_datasets WORKDIR=gs://my-bucket/runs/c10 \
#   launch/tpu_pod.sh --config=cifar10 [--config.FIELD=VALUE ...]
#
# Steps: (1) copy this repository to every worker, (2) install it with jax[tpu] into a
# virtual environment there (once; SETUP=0 skips it), (3) run bmd_jax.main on all workers at
# once with --distributed=on. The data is read from a TFDS data_dir (a GCS bucket is fine:
# prepare the data set once, e.g. with `tfds build cifar10 --data_dir=$DATA_DIR`); each host
# reads only its shard. Checkpoints and metrics go to WORKDIR, which every host must see
# (a GCS bucket); only process 0 writes metrics. Re-running the same command resumes from the
# newest checkpoint, e.g. after a preemption.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM's name}"
: "${ZONE:?set ZONE to the TPU VM's zone}"
: "${WORKDIR:?set WORKDIR to a folder every worker can write, e.g. gs://bucket/runs/x}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
DATA_DIR=${DATA_DIR:-}
REMOTE_DIR=${REMOTE_DIR:-bmd_jax}
SETUP=${SETUP:-1}
REPO=$(cd "$(dirname "$0")/.." && pwd)

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

if [[ $SETUP == 1 ]]; then
  tarball=$(mktemp -t bmd_jax.XXXXXX.tar.gz)
  tar -C "$REPO" --exclude=.git --exclude=runs -czf "$tarball" .
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:bmd_jax.tar.gz" --zone="$ZONE" \
    $PROJECT_FLAG --worker=all
  ssh_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf bmd_jax.tar.gz && \
    python3 -m venv ~/bmd_jax_env && . ~/bmd_jax_env/bin/activate && \
    pip install -q -U pip 'jax[tpu]' && pip install -q -e \"$REMOTE_DIR[gcs]\""
fi

data_flag=${DATA_DIR:+--config.data_dir=$DATA_DIR}
args=$(printf ' %q' "$@")
ssh_all "cd $REMOTE_DIR && . ~/bmd_jax_env/bin/activate && \
  python -m bmd_jax.main --distributed=on --workdir=$WORKDIR $data_flag $args"
