#!/usr/bin/env bash
# Session 14's first device call (kernels/NOTES.md "After v13" and v14): the conv kernels past 2**31 elements, the
# CUDA backward with a register cap (launch bounds asking 3+ blocks per SM), and the whole test suite on the GPU
# machine with its failures listed.
# Usage (repo root, on the GPU machine): bash kernels/gpu_v14.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step conv big
timeout 120 python kernels/conv_bench.py --big 600000
step bwd minb
timeout 150 python kernels/scan_cuda_bwd.py --no-checks --lengths 16384,65536 \
  --configs 8:2:4:1,8:2:4:1:3,8:2:2:1:5,8:1:4:1:4,8:1:4:1:3,16:1:4:1:3
step suite
timeout 330 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=line tests \
  --deselect tests/train/test_debug_mqar.py::test_debug_flavor_learns_short_mqar --ignore=tests/vllm 2>&1 | tail -60
