#!/usr/bin/env bash
# The 1M-token cost points of issue 4, on one H100 (see reports/data-gpu/README.md).
# Usage (repo root, on the GPU machine): PART=1|2|3 bash scripts/cost_1m.sh STORE_DIR
# (three parts so that each fits one device call of 10 minutes; all write to the same store).
# bf16 weights, chunked prefill in 64k-token pieces with state passing (activations stay 64k tokens
# long; attention's KV cache still grows to the full context), random weights (cost needs no training).
set -u
D=${1:?store directory}
L=4096,16384,65536,262144
C="--dtype bfloat16 --prefill-chunk 65536 --device cuda -d $D"
W="--arch d_model=2048 --arch n_layers=8 --arch n_heads=16 --arch headdim=64 --arch max_context=1048576"
S="--arch max_context=1048576"
ek() { echo "+ evalkit cost $*"; timeout "$T" python -m evalkit.cli cost "$@" 2>&1 | grep -v "^\s*$"; }
case "${PART:?PART=1, 2 or 3}" in
1)  # zoo-size models (d_model 64, 4 layers; hybrid: 1 of 4 attention): 4k-256k x 3 repeats, 1M x 2
    for m in mamba mamba2 hybrid transformer; do
      T=150 ek $m $S $C --lengths $L --repeats 3
      T=200 ek $m $S $C --lengths 1048576 --repeats 2
    done ;;
2)  # d_model 2048 x 8 layers (hybrid: 2 of 8 attention): 4k-256k x 3 repeats; the SSMs at 1M x 2
    for m in mamba mamba2 hybrid transformer; do T=150 ek $m $W $C --lengths $L --repeats 3; done
    for m in mamba mamba2; do T=150 ek $m $W $C --lengths 1048576 --repeats 2; done ;;
3)  # d_model 2048 at 1M with attention layers: one timed prefill after the warm-up
    T=200 ek hybrid $W $C --lengths 1048576 --repeats 1
    T=380 ek transformer $W $C --lengths 1048576 --repeats 1 ;;
esac
