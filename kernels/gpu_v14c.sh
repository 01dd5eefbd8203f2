#!/usr/bin/env bash
# Session 14's backward sweeps (kernels/NOTES.md v14b-v14e, runs 2-5 and 12): GPU tests of the CUDA selective-scan
# file, then the config sweep at 64k and the length table for the fastest config.
# Usage (repo root, on the GPU machine):
#   [CONFIGS=K:ROWS:WARPS[:V4[:MINB[:PAIRBAR[:TSCAN[:SBC[:SIN]]]]]],...] [PYTEST_K=backward] \
#   bash kernels/gpu_v14c.sh
# Config fields 6 and 7 meant other options in some runs (BC32 / SCANX in run 2, SPB in run 4, DEFER in run 5, ILP in
# run 12; all removed since): kernels/results-h200-v14.md gives each run's list and meaning. Runs 2 and 12 ran this
# script's two earlier copies (gpu_v14b.sh, gpu_v14e.sh; run 12's with PYTEST_K=backward), merged into it after.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest
timeout 240 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=short ${PYTEST_K:+-k "$PYTEST_K"} \
  tests/kernels/test_selective_scan_cuda.py 2>&1 | grep -v -i "benchmark" | tail -30
step bwd sweep
timeout 200 python kernels/scan_cuda_bwd.py --no-checks --lengths 16384,65536 --configs ${CONFIGS:-8:2:4:1:1:1,8:2:4:1}
