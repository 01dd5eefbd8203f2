#!/usr/bin/env bash
# Session 14's last device call (kernels/NOTES.md v14): the new backward default (one barrier per two states) through
# the GPU tests of every file that runs it (the CUDA and Triton selective-scan files, the trainer), its length
# table, Nsight Compute's stall and scheduler sections for it, and the 9 subprocess tests of run 1 again with an
# absolute PYTHONPATH.
# Usage (repo root, on the GPU machine): bash kernels/gpu_v14d.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest kernels and trainer
timeout 240 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=short tests/kernels/test_selective_scan_cuda.py \
  tests/kernels/test_selective_scan_triton.py tests/train/test_train.py 2>&1 | grep -v -i "benchmark" | tail -15
step bwd lengths
timeout 150 python kernels/scan_cuda_bwd.py --no-checks --lengths 4096,16384,65536,262144 --configs 8:2:4:1:1:1 \
  | tail -9
step ncu
S="--section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats"
timeout 120 ncu --clock-control none -k regex:evalkit_selective_scan_bwd $S python kernels/ncu_scan.py --serial "" \
  --bwd 2>&1 | grep -v "^==PROF==" | grep -E "Stall|Warp Cycles|Issued|Eligible|Active Warps|Registers|Shared Memory|Occupancy|Block Limit|No Eligible|One or More|Waves" | head -40
step subprocess tests
timeout 150 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=line tests/reliability \
  tests/plugins/test_plugins_packaging.py 2>&1 | grep -v -i "benchmark" | tail -12
