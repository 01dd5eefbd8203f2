"""SSD with a large state (N = 256, the N-blocked output path) on the GPU: forward and every gradient
against the float32 reference at the shape Mamba-2 N=256 trains with in reports/repro (batch 256,
256 steps, 8 heads of 32, chunk 64), bf16 and fp32, plus the one-pass path at N = 128 for comparison.
Mamba-2 N=256 crashed at its first training step on the H200 before this path (kernels/NOTES.md v6).

    PYTHONPATH=. python kernels/ssd_bign_check.py [--time]

``--time`` also times forward and forward+backward at N = 128 (one-pass output path) and N = 256
(N-blocked), bf16, at the issue's SSD shape (batch 1, 16 heads of 64) and the training shape.
"""

from __future__ import annotations

import torch

from evalkit.kernels.ssd import ssd_ref
from evalkit.kernels.ssd import triton as ssd_triton
from kernels.bench import ms, rel, ssd_inputs


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| shape | dtype | y rel | final rel | worst grad rel | ok |")
    print("|---|---|---|---|---|---|")
    ok = True
    for (b, L, h, p, n) in ((256, 256, 8, 32, 256), (4, 1000, 8, 32, 256), (256, 256, 8, 32, 128)):
        for dtype in (torch.float32, torch.bfloat16):
            t = ssd_inputs(b, L, h, p, n, dtype, seed=n + L, grad=True)
            y, hT = ssd_triton.ssd(**t, chunk_size=64, return_final_state=True)
            wy, wh = torch.randn_like(y, dtype=torch.float32), torch.randn_like(hT)
            g = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(t.values()))
            f = {k: v.detach().float().requires_grad_(True) for k, v in t.items()}
            y_r, hT_r = ssd_ref(**f, chunk_size=64, return_final_state=True)
            g_r = torch.autograd.grad((y_r * wy).sum() + (hT_r * wh).sum(), list(f.values()))
            ey, eh = rel(y, y_r), rel(hT, hT_r)
            eg = max(rel(a, r) for a, r in zip(g, g_r))
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            good = ey < tol and eh < tol and eg < tol
            ok &= good
            print(f"| B{b}-L{L}-H{h}-P{p}-N{n} | {str(dtype)[6:]} | {ey:.1e} | {eh:.1e} | {eg:.1e} | "
                  f"{'ok' if good else 'FAIL'} |")
            del t, f, g, g_r
    torch.cuda.synchronize()
    print("checks:", "all passed" if ok else "FAILURES")


def timing() -> None:
    print()
    print("| shape | N | path | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|")
    for (b, L, h, p) in ((1, 16384, 16, 64), (1, 65536, 16, 64), (256, 256, 8, 32)):
        for n in (128, 256):
            t = ssd_inputs(b, L, h, p, n, torch.bfloat16, seed=1, grad=True)
            with torch.no_grad():
                f = ms(lambda: ssd_triton.ssd(**t, chunk_size=64), rep=50)
            y = ssd_triton.ssd(**t, chunk_size=64)
            gy = torch.randn_like(y)

            def fb():
                y = ssd_triton.ssd(**t, chunk_size=64)
                torch.autograd.grad(y, list(t.values()), gy)

            fbm = ms(fb, rep=50)
            path = "n-blocked" if n > ssd_triton.OUT_MAX_N else "one-pass"
            print(f"| B{b}-L{L}-H{h}-P{p} | {n} | {path} | {f:.3f} | {fbm:.3f} |")
            del t, y, gy


if __name__ == "__main__":
    import sys

    main()
    if "--time" in sys.argv:
        timing()
