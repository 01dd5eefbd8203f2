#!/usr/bin/env bash
# Session 14's device calls 3-5 (kernels/NOTES.md v14c): the CUDA backward with one block barrier per two states
# (PAIRBAR), its reductions deferred (DEFER): GPU tests of the CUDA selective-scan file, then the config sweep.
# Run 3's list: 8:2:4:1,8:2:4:1:1:1,8:2:8:1:1:1,8:2:2:1:1:1,8:2:4:0:1:1,16:1:4:1:1:1; run 4's (the sixth field was SPB,
# states per barrier, then; reverted after it): 8:2:4:1,8:2:4:1:1:2,8:2:4:1:1:4,8:2:8:0:1:2,8:2:8:0:1:4,8:2:2:1:1:4,
# 16:1:8:1:1:2,16:1:4:1:1:4.
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
  --configs ${CONFIGS:-8:2:4:1:1:1,8:2:4:1:1:1:1,8:2:4:1}
