#!/usr/bin/env bash
# Gathers what bench/gpu_run.sh needs on the offline GPU machine into bench/gpu_payload/
# (git-ignored, never committed): the wheels it lacks (Python 3.12, manylinux) and the CIFAR-10
# JPEG bytes packed into one file; then prints the size of all that travels (working tree +
# payload), which must stay under 64 MiB.
#
#   bench/prepare_gpu_run.sh [CIFAR10_JPEG_ROOT]   (default /work/shared/data/cifar10-jpeg)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-/work/shared/data/cifar10-jpeg}"
payload=bench/gpu_payload
mkdir -p "$payload/wheels"

# What the GPU machine lacks (it has jax, flax, optax, orbax, chex, absl, numpy, protobuf,
# PyYAML, etils). grain is not needed by the device input path; it travels for the grain path.
# --no-deps: its dependencies would pull jax and numpy again.
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$payload/wheels" \
  ml_collections==1.1.0 tensorboardX==2.6.5 grain==0.2.18 array_record==0.8.6 \
  cloudpickle==3.1.3 portpicker==1.6.0

if [[ ! -f "$payload/cifar10.npz" ]]; then
  python3 bench/jpeg_pack.py pack "$data" "$payload/cifar10.npz"
fi

tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
payload_bytes=$(du -cb "$payload" | tail -1 | cut -f1)
total=$((tree_bytes + payload_bytes))
echo "working tree ${tree_bytes} B + payload ${payload_bytes} B = ${total} B" \
     "($((total / 1048576)) MiB of 64 MiB)"
du -b "$payload"/* "$payload"/wheels/* | sort -n
if (( total >= 64 * 1048576 )); then
  echo "over the 64 MiB budget" >&2
  exit 1
fi
