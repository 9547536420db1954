#!/bin/bash
# Download the wheels of scripts/gpu_wheels.txt for the lent GPU machine (CPython 3.12, x86-64
# Linux) into DIR (default .whl, git-ignored; pass it to the device call as carry=[".whl"]).
set -euo pipefail
DIR=${1:-.whl}
mkdir -p "$DIR"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -r "$(dirname "$0")/gpu_wheels.txt"
ls "$DIR"
