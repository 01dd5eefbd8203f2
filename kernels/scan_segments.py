"""The segmented (two-pass) selective-scan forward on the GPU: checks against the reference, then
times segments x length at the issue's shape (batch 1, d_inner 4096, state 16, bf16) against the
floor (bytes / measured copy bandwidth, exps / measured exp2 rate; the two-pass forward evaluates
the exps twice, the floor counts them once).

    PYTHONPATH=. python kernels/scan_segments.py
"""

from __future__ import annotations

import torch

from evalkit.kernels.selective_scan import selective_scan_ref
from evalkit.kernels.selective_scan import triton as ss_triton
from kernels.bench import ceilings, fmt, ms, rel, ss_floor, ss_inputs


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    ceil = ceilings()
    print(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s, exp2 {ceil['exp2_per_s'] / 1e12:.2f} T/s")
    print("| check | dtype | segments | y rel | final rel | ok |")
    print("|---|---|---|---|---|---|")
    ok_all = True
    for (b, d, L, n) in ((1, 4096, 4099, 16), (2, 96, 1000, 16), (1, 300, 20000, 16)):
        for dtype in (torch.float32, torch.bfloat16):
            t = ss_inputs(b, d, L, n, dtype, seed=L + d)
            h0 = torch.randn(b, d, n, device="cuda")
            f = {k: v.float() for k, v in t.items()}
            y_ref, h_ref = selective_scan_ref(**f, initial_state=h0, return_final_state=True)
            for S in (1, 3, 16):
                y, hT, _ = ss_triton.selective_scan_fwd(**t, initial_state=h0, segments=S, variant="scan")
                ey, eh = rel(y, y_ref), rel(hT, h_ref)
                good = ey < (1e-5 if dtype == torch.float32 else 1e-2) and eh < 1e-4
                ok_all &= good
                print(f"| B{b}-D{d}-L{L}-N{n} | {str(dtype)[6:]} | {S} | {ey:.1e} | {eh:.1e} | {'ok' if good else 'FAIL'} |")
    print()
    d, n = 4096, 16
    print("## selective_scan forward, batch 1, d_inner 4096, state 16, bf16: ms by segments")
    print("| L | 1 (v3 walk) | 2 | 4 | 8 | 16 | 32 | best ÷ floor | floor ms (bytes / exps) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for L in (4096, 16384, 65536, 262144):
        t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
        times = {S: ms(lambda: ss_triton.selective_scan_fwd(**t, segments=S, variant="scan"), rep=50) for S in (1, 2, 4, 8, 16, 32)}
        floor, fb, fe = ss_floor(ceil, L)
        best = min(times.values())
        print(f"| {L} | " + " | ".join(fmt(times[S]) for S in (1, 2, 4, 8, 16, 32))
              + f" | {best / floor:.2f} | {floor:.3f} ({fb:.3f} / {fe:.3f}) |")
        del t
    print("checks:", "all passed" if ok_all else "FAILURES")


if __name__ == "__main__":
    main()
