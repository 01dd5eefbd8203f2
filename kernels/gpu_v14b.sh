#!/usr/bin/env bash
# Session 14's second device call (kernels/NOTES.md v14): the CUDA backward with running pointers, fp32 B / C
# copies (BC32) and window-sum scans (SCANX): GPU tests of the CUDA selective-scan file, then the config sweep.
# Usage (repo root, on the GPU machine): bash kernels/gpu_v14b.sh
# (Run 2's list; its sixth and seventh fields were BC32 and SCANX then, both removed after it: the sixth is now
# PAIRBAR, see gpu_v14c.sh.)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest
timeout 240 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=short tests/kernels/test_selective_scan_cuda.py \
  2>&1 | tail -30
step bwd sweep
timeout 200 python kernels/scan_cuda_bwd.py --no-checks --lengths 16384,65536 \
  --configs ${CONFIGS:-8:2:4:1,8:2:4:1:1:1,8:2:4:1:1:0:1,8:2:4:1:1:1:1,16:1:4:1:1:1:1,16:1:4:1:1:0:1,8:1:4:1:1:1:1}
