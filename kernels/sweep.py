"""Tuning sweep (one-off, kept for the record): isolate a failing SSD config, then time kernel
variants. PYTHONPATH=. python kernels/sweep.py"""
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

CASE = """
import torch, torch.nn.functional as F
from evalkit.kernels.ssd import triton as S, ssd_ref
b,L,h,p,n,T,dt_,st,bn={args}
dtype=getattr(torch,dt_)
x=torch.randn(b,L,h,p,device='cuda').to(dtype); dt=F.softplus(torch.randn(b,L,h,device='cuda')-1).to(dtype)
A=-torch.exp(torch.randn(h,device='cuda')); B=torch.randn(b,L,1,n,device='cuda').to(dtype); C=torch.randn(b,L,1,n,device='cuda').to(dtype)
y,hT=S.ssd_fwd(x,dt,A,B,C,T,num_stages=st,state_block_n=bn); torch.cuda.synchronize()
yr,hr=ssd_ref(x.float(),dt.float(),A,B.float(),C.float(),T,return_final_state=True)
print('ok', ((y.float()-yr).norm()/yr.norm()).item(), ((hT-hr).norm()/hr.norm()).item())
"""


def isolate():
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    for args in [(1, 1000, 2, 16, 32, 128, "float16", 2, None), (1, 1000, 2, 16, 32, 128, "float16", 1, None),
                 (1, 1000, 2, 16, 32, 128, "bfloat16", 2, None), (1, 1000, 2, 16, 32, 64, "float16", 2, None),
                 (1, 1000, 2, 16, 32, 128, "float16", 2, 16), (1, 1000, 2, 64, 32, 128, "float16", 2, None),
                 (1, 1000, 2, 16, 128, 128, "float16", 2, None), (1, 1024, 2, 16, 32, 128, "float16", 2, None)]:
        r = subprocess.run([sys.executable, "-c", CASE.format(args=args)], capture_output=True, text=True, env=env)
        last = (r.stdout + r.stderr).strip().splitlines()
        err = [ln for ln in last if "Error" in ln or "error" in ln or ln.startswith("ok") or "File \"/" in ln][-4:]
        print(args, "rc", r.returncode, " | ".join(err)[:600], flush=True)


def sweep_ss():
    from evalkit.kernels.selective_scan import triton as SS
    d, n, L = 4096, 16, 16384
    g = lambda *s: torch.randn(*s, device="cuda")  # noqa: E731
    t = dict(u=g(1, d, L).bfloat16(), delta=(g(1, d, L) - 1).bfloat16(), A=-(torch.rand(d, n, device="cuda") * 4 + .1),
             B=g(1, n, L).bfloat16(), C=g(1, n, L).bfloat16(), D=g(d), z=g(1, d, L).bfloat16(), delta_bias=g(d) * .5)
    for T in (4, 8, 16, 32, 64):
        for BD in (8, 16, 32, 64, 128):
            for nw in (1, 2, 4, 8):
                if not 512 <= T * BD * 16 <= 32768 or T * BD * 16 < 32 * nw * 4:
                    continue
                try:
                    ms = do_bench(lambda: SS.selective_scan_fwd(**t, chunk=T, block_d=BD, num_warps=nw),
                                  warmup=10, rep=60, return_mode="median")
                    print(f"ss T{T} BD{BD} nw{nw}: {ms:.3f} ms", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"ss T{T} BD{BD} nw{nw}: {type(e).__name__}", flush=True)


def sweep_ssd():
    from evalkit.kernels.ssd import triton as S
    L, h, p, n = 65536, 16, 64, 128
    g = lambda *s: torch.randn(*s, device="cuda")  # noqa: E731
    x, dt = g(1, L, h, p).bfloat16(), F.softplus(g(1, L, h) - 1).bfloat16()
    A, B, C = -torch.exp(g(h)), g(1, L, 1, n).bfloat16(), g(1, L, 1, n).bfloat16()
    for T in (64, 128, 256):
        for bn in (16, 32, 64):
            for st in (1, 2, 3):
                try:
                    ms = do_bench(lambda: S.ssd_fwd(x, dt, A, B, C, T, state_block_n=bn, num_stages=st),
                                  warmup=10, rep=60, return_mode="median")
                    print(f"ssd T{T} BN{bn} st{st}: {ms:.3f} ms", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"ssd T{T} BN{bn} st{st}: {type(e).__name__} {str(e)[:80]}", flush=True)


if __name__ == "__main__":
    isolate()
    sweep_ss()
    sweep_ssd()
