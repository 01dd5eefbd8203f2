#!/usr/bin/env bash
# Session 14's last backward experiment (kernels/NOTES.md v14e): the rows interleaved step by step (ILP), with and
# without one barrier per two states: the CUDA file's backward tests, then the sweep and the length table.
# Usage (repo root, on the GPU machine): bash kernels/gpu_v14e.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest
timeout 150 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=short -k backward \
  tests/kernels/test_selective_scan_cuda.py 2>&1 | grep -v -i "benchmark" | tail -8
step bwd sweep
timeout 120 python kernels/scan_cuda_bwd.py --no-checks --lengths 16384,65536 \
  --configs ${CONFIGS:-8:2:4:1:1:1,8:2:4:1:1:1:1,8:2:4:1:1:0:1}
