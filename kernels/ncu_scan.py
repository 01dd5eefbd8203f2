"""One launch of each selective-scan forward at the issue's shape (batch 1, d_inner 4096, N 16, bf16),
for Nsight Compute (no warm-up launch: ncu would profile it too; NVRTC compiles before the launch). E.g.

    ncu --clock-control none -k regex:evalkit_selective_scan --section WarpStateStats ... \\
        python kernels/ncu_scan.py [--L 16384] [--serial 4:16:4:1:1,4:16:1:1:1] [--parallel] [--bwd]

``--bwd``: also the CUDA training forward (time-parallel, states every 32·K steps) and one launch of the CUDA
backward (``cuda_bwd.BWD_CONFIG``) on a random output gradient; select it with ``-k regex:scan_bwd``;
``--bwd-configs 8:2:4:1,8:2:4:1:1:1``: one launch of each of these backward configs instead.
"""

from __future__ import annotations

import argparse

import torch

from evalkit.kernels.selective_scan import cuda as ss_cuda
from evalkit.kernels.selective_scan import cuda_bwd, cuda_serial
from kernels.bench import ss_inputs
from kernels.scan_cuda_bwd import _cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", type=int, default=16384)
    ap.add_argument("--serial", default="4:16:4:1:1,4:16:4:1:0")
    ap.add_argument("--parallel", action="store_true", help="also the time-parallel kernel (cuda.py)")
    ap.add_argument("--bwd", action="store_true", help="also the CUDA backward (cuda_bwd.py)")
    ap.add_argument("--bwd-configs", default="",
                    help="K:ROWS:WARPS[:V4[:MINB[:PAIRBAR[:TSCAN[:SBC[:SIN]]]]]],... (with --bwd)")
    a = ap.parse_args()
    t = ss_inputs(1, 4096, a.L, 16, torch.bfloat16, seed=1)
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None)
    for c in filter(None, a.serial.split(",")):
        cfg = tuple(int(x) for x in c.split(":"))
        print("serial", cfg, flush=True)
        cuda_serial.launch(*args, cfg)
    if a.parallel:
        print("time-parallel", ss_cuda.CONFIG, flush=True)
        ss_cuda._launch(*args, None, 0, None)
    if a.bwd:
        cfgs = [_cfg(c) for c in filter(None, a.bwd_configs.split(","))]
        gy = torch.randn_like(t["u"])
        for cfg in cfgs or [cuda_bwd.BWD_CONFIG]:
            print("backward", cfg, flush=True)
            ypre = torch.empty_like(t["u"])
            _, _, st = ss_cuda.selective_scan_fwd_cuda_train(*args[:9], None, cuda_bwd.store_tb(cfg), ypre)
            cuda_bwd.selective_scan_bwd_cuda(*args[:8], None, st, ypre, gy, None, config=cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
