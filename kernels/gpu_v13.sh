#!/usr/bin/env bash
# Session 13's first device call (kernels/NOTES.md "After v12" and v13): the GPU checks of everything on main that
# had never run on a GPU, the serial forward's timings and its values past 2**31, the CUDA backward, the native
# Mamba's cost points at d_model 2048 with the serial forward, and Nsight Compute of the CUDA backward.
# Usage (repo root, on the GPU machine): bash kernels/gpu_v13.sh OUT_DIR
set -o pipefail
O=${1:?OUT_DIR}
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
step pytest
timeout 300 python -m pytest -q -n 8 -p no:cacheprovider --tb=line tests/kernels/test_selective_scan_cuda.py \
  tests/kernels/test_selective_scan_cuda_serial.py tests/kernels/test_selective_scan_triton.py \
  tests/train/test_train.py 2>&1 | tail -25
step serial
timeout 120 python kernels/scan_serial.py --no-checks --configs 4:16:4:1:1 --lengths 16384,65536
step big
timeout 150 python kernels/scan_serial.py --big 589824
step bwd
timeout 120 python kernels/scan_cuda_bwd.py --no-checks --configs 8:2:4:1 --lengths 65536
step cost
W="--arch d_model=2048 --arch n_layers=8 --arch n_heads=16 --arch headdim=64 --arch max_context=1048576"
timeout 150 python -m evalkit.cli cost mamba $W --dtype bfloat16 --prefill-chunk 65536 --device cuda \
  -d "$O/cost_v13" --lengths 65536,262144,1048576 --repeats 2
step ncu
S="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats
   --section InstructionStats --section MemoryWorkloadAnalysis_Tables --section LaunchStats --section Occupancy"
timeout 150 ncu --clock-control none -k regex:evalkit_selective_scan_bwd $S python kernels/ncu_scan.py --serial "" \
  --bwd 2>&1 | grep -v "^==PROF==" | tail -120
