#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what a lent GPU machine needs for
# bench/gpu_suite.py: the wheels it lacks (Python 3.12, x86-64) in .whl/ and
# the CIFAR-10 JPEG copy as data/cifar10-jpeg.tar.gz, both git-ignored, to be
# named in the device tool's `carry` with bench/results/gpu/ckpt (the study's
# carried checkpoints, if any). docs/gpu.md gives the one command per lease.
#
#     bash bench/gpu_prepare.sh ../shared/data/cifar10-jpeg
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: bash bench/gpu_prepare.sh <cifar10-jpeg folder>}
rm -rf .whl && mkdir -p .whl data
# The GPU machine has jax, flax, optax, orbax, chex, absl-py, etils, protobuf, pyyaml, matplotlib, pillow, torch,
# torchvision, timm (KINDS.md); not these two. Grain stays behind: the suite's runs read the on-device pipeline,
# and a Checkpointer that finds no grain leaves it out (a grain carried without its own dependencies broke runs).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  ml_collections==1.1.0 tensorboardX==2.6.5
tar czf data/cifar10-jpeg.tar.gz -C "$(dirname "$data")" "$(basename "$data")"
mkdir -p bench/results/gpu/ckpt  # so that `carry` finds it before the first lease brings any
du -sh .whl data/cifar10-jpeg.tar.gz bench/results/gpu/ckpt
# What travels: the tracked tree, these, and the carried checkpoints: at most 64 MiB in all.
du -sc --apparent-size -BM .whl data/cifar10-jpeg.tar.gz bench/results/gpu/ckpt | tail -1
