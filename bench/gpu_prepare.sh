#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what a lent GPU machine needs for
# bench/gpu_suite.py: the wheels it lacks (Python 3.12, x86-64) in .whl/ and
# the CIFAR-10 JPEG copy as data/cifar10-jpeg.tar.gz, both git-ignored, to be
# named in the device tool's `carry`. docs/gpu.md gives the one command per call.
#
#     bash bench/gpu_prepare.sh ../shared/data/cifar10-jpeg
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: bash bench/gpu_prepare.sh <cifar10-jpeg folder>}
rm -rf .whl && mkdir -p .whl data
# The GPU machine has jax, flax, optax, orbax, chex, absl-py, etils, protobuf, safetensors, torch, timm (KINDS.md);
# not these (nor TensorFlow or TFDS: the package imports and trains without them).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  ml_collections==1.1.0 tensorboardX==2.6.5 grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
tar czf data/cifar10-jpeg.tar.gz -C "$(dirname "$data")" "$(basename "$data")"
du -sh .whl data/cifar10-jpeg.tar.gz
