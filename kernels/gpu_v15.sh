#!/usr/bin/env bash
# Session 15's backward call (kernels/NOTES.md v15): the GPU tests of the CUDA selective-scan backward (the
# transposed-scan configs among them), the config sweep at 16k / 64k and the length table for the fastest, then
# Nsight Compute for the default and the transposed scans: stall reasons, issue rate and shared-memory bank conflicts.
# Usage (repo root, on the GPU machine): [CONFIGS=K:ROWS:WARPS[:V4[:MINB[:PAIRBAR[:TSCAN[:SBC[:SIN]]]]]],...] \
#   [NCU_CONFIGS=...] bash kernels/gpu_v15.sh
# Run 1 (kernels/results-h200-v15.md) ran the lists of commit 0d98fa9; the defaults below are NOTES "After v15"'s.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
DEF=8:2:4:1:1:1,8:2:4:1:1:0:1,8:2:4:1:1:1:0:1,8:2:4:1:3:1:0:1,8:2:4:1:1:1:1:1,8:2:4:1:1:1:0:1:1,8:2:4:1:1:1:1:1:1
step pytest backward
timeout 240 python -m pytest -q -n 16 -p no:cacheprovider -rf --tb=short -k backward \
  tests/kernels/test_selective_scan_cuda.py 2>&1 | grep -v -i "benchmark" | tail -20
step bwd sweep
timeout 240 python kernels/scan_cuda_bwd.py --no-checks --lengths 4096,16384,65536,262144 \
  --configs "${CONFIGS:-$DEF}"
step ncu
M="regex:smsp__average_warps_issue_stalled_(wait|short_scoreboard|long_scoreboard|dispatch_stall|barrier|mio_throttle"
M="$M|lg_throttle|math_pipe_throttle|not_selected|branch_resolving)_per_issue_active\.ratio"
M="$M,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,launch__registers_per_thread"
M="$M,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum"
M="$M,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,gpu__time_duration.sum,launch__occupancy_limit_registers"
M="$M,launch__occupancy_limit_shared_mem,sm__warps_active.avg.per_cycle_active"
timeout 150 ncu --clock-control none -k regex:evalkit_selective_scan_bwd --metrics "$M" python kernels/ncu_scan.py \
  --serial "" --bwd --bwd-configs "${NCU_CONFIGS:-8:2:4:1:1:1,8:2:4:1:3:1:0:1,8:2:4:1:1:1:1:1:1}" 2>&1 \
  | grep -v "^==PROF==" | grep -E "evalkit_|^ +(smsp|l1tex|launch|gpu)__" | tail -60
