#!/usr/bin/env bash
# Gathers what bench/gpu_run.sh needs on the offline GPU machine into bench/gpu_payload/
# (git-ignored, never committed): the wheels it lacks (Python 3.12, manylinux) and the CIFAR-10
# JPEG bytes packed into one file; then prints the size of all that travels (working tree +
# payload), which must stay under 64 MiB.
#
#   bench/prepare_gpu_run.sh [--with_grain] [CIFAR10_JPEG_ROOT]
#                                  (default root: /work/shared/data/cifar10-jpeg)
#
# Budget (measured): working tree ~1.0 MB + packed JPEGs 55.9 MB + ml_collections and
# tensorboardX wheels 0.17 MB = 57 MB of 67.1 (64 MiB). What is left (~10 MB) carries the
# checkpoints a window returns (runs_<variant>.tar.gz, ~4.5 MB a ResNet-20 run: step 1's and
# step 2's latest train states) into the next window: two runs continue, not four. grain's
# wheels (4.4 MB; --with_grain) are only for the grain input path, which gpu_run.sh does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
with_grain=0
if [[ ${1:-} == --with_grain ]]; then with_grain=1; shift; fi
data="${1:-/work/shared/data/cifar10-jpeg}"
payload=bench/gpu_payload
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
