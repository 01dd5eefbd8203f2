#!/usr/bin/env bash
# Session 13's second device call (kernels/NOTES.md v13): the zoo-size native Mamba's cost points with today's
# default kernels (the store's d_model-64 Mamba rows are the H100's Triton-era ones), and where the hybrid's
# graphed + compiled training step spends its GPU time, kernels against references.
# Usage (repo root, on the GPU machine): bash kernels/gpu_v13b.sh OUT_DIR
set -o pipefail
O=${1:?OUT_DIR}
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() { echo; echo "+ $*"; }
C="--arch max_context=1048576 --dtype bfloat16 --prefill-chunk 65536 --device cuda -d $O/cost_v13"
step cost mamba d64
timeout 150 python -m evalkit.cli cost mamba $C --lengths 4096,16384,65536,262144 --repeats 3
timeout 150 python -m evalkit.cli cost mamba $C --lengths 1048576 --repeats 2
step train_speed hybrid
timeout 400 python kernels/train_speed.py --models hybrid --compile-models hybrid --skip-plain hybrid \
  --profile-compile
