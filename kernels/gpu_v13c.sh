#!/usr/bin/env bash
# Session 13's third to seventh device calls (kernels/NOTES.md v13): the causal conv1d + SiLU kernels
# (evalkit/kernels/conv1d/) on the GPU: the tests that run them, their benchmark, and the zoo trainer's speed with
# them (graphed + compiled; the plain graph / eager runs too for the models not in SKIP_PLAIN), profiling the
# hybrid's step.
# Usage (repo root, on the GPU machine): [SKIP_PLAIN=hybrid,mamba2,mamba] bash kernels/gpu_v13c.sh OUT_DIR
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest
timeout 240 python -m pytest -q -n 8 -p no:cacheprovider --tb=short tests/kernels/test_conv1d_triton.py \
  tests/kernels/test_decode_step.py tests/train/test_train.py tests/cost/test_cost.py tests/train/test_pool.py \
  tests/models 2>&1 | tail -25
step conv_bench
timeout 120 python kernels/conv_bench.py
step train_speed
timeout 420 python kernels/train_speed.py --models hybrid,mamba2,mamba --compile-models hybrid,mamba2,mamba \
  --skip-plain ${SKIP_PLAIN:-mamba2,mamba} --profile-compile
