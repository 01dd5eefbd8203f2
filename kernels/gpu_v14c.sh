#!/usr/bin/env bash
# Session 14's third and fourth device calls (kernels/NOTES.md v14c): the CUDA backward with one block barrier per
# SPB states (1 / 2 / 4): GPU tests of the CUDA selective-scan file, then the config sweep. (Run 3 ran the list
# 8:2:4:1,8:2:4:1:1:1,8:2:8:1:1:1,8:2:2:1:1:1,8:2:4:0:1:1,16:1:4:1:1:1, its sixth field then PAIRBAR = SPB 2.)
# Usage (repo root, on the GPU machine): bash kernels/gpu_v14c.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest
timeout 240 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=short tests/kernels/test_selective_scan_cuda.py \
  2>&1 | grep -v -i "benchmark" | tail -30
step bwd sweep
timeout 200 python kernels/scan_cuda_bwd.py --no-checks --lengths 16384,65536 \
  --configs ${CONFIGS:-8:2:4:1,8:2:4:1:1:2,8:2:4:1:1:4,8:2:8:0:1:2,8:2:8:0:1:4,8:2:2:1:1:4,16:1:8:1:1:2,16:1:4:1:1:4}
