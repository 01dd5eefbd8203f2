"""The CUDA (NVRTC) selective-scan inference forward (``evalkit/kernels/selective_scan/cuda.py``,
kernels/NOTES.md v10) on the GPU, in one run: checks against the reference (fp32 / fp16 / bf16,
odd and aligned lengths, an initial state, without D / z / bias / softplus, mixed dtypes, the native
mixer's strided views, CUDA-graph replay), a config sweep at the issue's shape (batch 1, d_inner
4096, state 16, bf16, L = 64k) beside the Triton default (time2), then a length table for the
fastest config against the floor (max of bytes ÷ copy bandwidth and exps ÷ exp2 rate, measured here).

    PYTHONPATH=. python kernels/scan_cuda.py [--configs 16:1:2:1:1,...] [--lengths 4096,...,1048576]
"""

from __future__ import annotations

import argparse
import ctypes

import torch

from evalkit.kernels.selective_scan import cuda as ss_cuda
from evalkit.kernels.selective_scan import selective_scan_ref
from evalkit.kernels.selective_scan import triton as ss_triton
from kernels.bench import ceilings, fmt, ms, rel, ss_floor, ss_inputs

# (K steps per lane, ROWS channels per warp, WARPS per block, state-loop unroll, B/C as fp32, two passes,
# B_n+1 / C_n+1 / z prefetched into registers). results-h200-v10.md: run 1 swept K 8 / 16, ROWS 1 / 2,
# WARPS 1 / 2 / 4 with fp32 B/C (with and without two passes) and bf16 B/C, no prefetch; run 2 the same
# with prefetch; run 4 added K 24 / ROWS 1, K 8 / ROWS 3-4 and a shared-memory prefetch of the next
# block's u / Δ / z (cp.async; slower, removed: commit 325d952 has it).
CONFIGS = [(16, 2, 4, 1, False, False, True), (16, 2, 2, 1, False, False, True), (8, 4, 4, 1, False, False, True),
           (24, 1, 4, 1, False, False, True), (16, 1, 4, 1, False, False, True), (16, 2, 4, 1, False, True, True),
           (16, 2, 4, 1, True, False, True), (16, 2, 4, 1, False, False, False)]
TOL_Y = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}


def _cfg(s: str) -> tuple:
    K, R, W, U, bc, tp, pf = (int(x) for x in s.split(":"))
    return (K, R, W, U, bool(bc), bool(tp), bool(pf))


def checks(configs) -> bool:
    print("| check | dtype | config | y rel | final rel | ok |")
    print("|---|---|---|---|---|---|")
    ok_all = True

    def one(name, t, dtype, cfg, **kw):
        nonlocal ok_all
        f = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        y_ref, h_ref = selective_scan_ref(**f, **kw, return_final_state=True)
        assert ss_cuda.available(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("z")), name
        y, hT = ss_cuda.selective_scan_fwd_cuda(**t, **kw, config=cfg)
        ey, eh = rel(y, y_ref), rel(hT, h_ref)
        good = ey < TOL_Y[dtype] and eh < 1e-4
        ok_all &= good
        print(f"| {name} | {str(dtype)[6:]} | {cfg} | {ey:.1e} | {eh:.1e} | {'ok' if good else 'FAIL'} |")

    for (b, d, L, n) in ((1, 4096, 4099, 16), (2, 96, 1000, 16), (1, 300, 20000, 16), (2, 37, 777, 8),
                         (2, 130, 4096, 16), (1, 64, 63, 32), (3, 33, 2048, 4)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            t = ss_inputs(b, d, L, n, dtype, seed=L + d)
            h0 = torch.randn(b, d, n, device="cuda")
            for cfg in configs:
                one(f"B{b}-D{d}-L{L}-N{n} h0", t, dtype, cfg, initial_state=h0)
            bare = {k: t[k] for k in ("u", "delta", "A", "B", "C")}  # without softplus Δ is taken as given: > 0
            bare["delta"] = torch.nn.functional.softplus(bare["delta"].float()).to(dtype)
            one(f"B{b}-D{d}-L{L}-N{n} no D/z/bias/softplus", bare, dtype, configs[0], delta_softplus=False)
    # u fp32 with bf16 B / C, and the native mixer's layout (z a half of xz, B / C slices of x_proj's output)
    t = ss_inputs(2, 256, 3000, 16, torch.float32, seed=5)
    t["B"], t["C"] = t["B"].to(torch.bfloat16), t["C"].to(torch.bfloat16)
    one("mixed u fp32 / B,C bf16", t, torch.float32, configs[0])
    b, d, L, n = 2, 512, 4096, 16
    t = ss_inputs(b, d, L, n, torch.bfloat16, seed=3)
    xz = torch.randn(b, 2 * d, L, device="cuda", dtype=torch.bfloat16)
    t["u"], t["z"] = xz.chunk(2, dim=1)
    dbc = torch.randn(b, 48 + 2 * n, L, device="cuda", dtype=torch.bfloat16)
    _, t["B"], t["C"] = dbc.split([48, n, n], dim=1)
    for cfg in configs:
        one("mixer views (xz.chunk, x_proj split)", t, torch.bfloat16, cfg)
    # CUDA graph: capture once, copy new inputs in, replay
    t = ss_inputs(1, 512, 8192, 16, torch.bfloat16, seed=11)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ss_cuda.selective_scan_fwd_cuda(**t)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_g, h_g = ss_cuda.selective_scan_fwd_cuda(**t)
    t2 = ss_inputs(1, 512, 8192, 16, torch.bfloat16, seed=12)
    for k in t:
        t[k].copy_(t2[k])
    g.replay()
    torch.cuda.synchronize()
    y_ref, h_ref = selective_scan_ref(**{k: v.float() for k, v in t2.items()}, return_final_state=True)
    ey, eh = rel(y_g, y_ref), rel(h_g, h_ref)
    good = ey < 1e-2 and eh < 1e-4
    ok_all &= good
    print(f"| CUDA graph replay, new inputs | bfloat16 | default | {ey:.1e} | {eh:.1e} | {'ok' if good else 'FAIL'} |")
    print()
    return ok_all


def sweep(ceil, configs) -> tuple | None:
    L, d, n = 65536, 4096, 16
    t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
    y_ref, h_ref = selective_scan_ref(**{k: v.float() for k, v in t.items()}, return_final_state=True)
    floor = ss_floor(ceil, L)[0]
    print("## config sweep at L = 64k (batch 1, d_inner 4096, N 16, bf16)")
    print("| kernel | K | ROWS | WARPS | unroll | B,C fp32 | two-pass | prefetch | regs | ms 64k | ÷ floor | y rel | final rel |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    k0 = ms(lambda: ss_triton.selective_scan_fwd(**t, variant="time2"), rep=100)
    print(f"| triton time2 {ss_triton.VARIANT_CONFIG['time2']} | | | | | | | | | {fmt(k0)} | {k0 / floor:.2f} | | |")
    best, best_ms = None, float("inf")
    for cfg in configs:
        try:
            y, hT = ss_cuda.selective_scan_fwd_cuda(**t, config=cfg)
            k = ms(lambda: ss_cuda.selective_scan_fwd_cuda(**t, config=cfg), rep=100)
        except Exception as e:  # noqa: BLE001
            print(f"| cuda | {' | '.join(map(str, cfg))} | | failed: {type(e).__name__}: {e} | | | |")
            continue
        regs = _regs(t, cfg)
        ey, eh = rel(y, y_ref), rel(hT, h_ref)
        print(f"| cuda | {' | '.join(map(str, cfg))} | {regs} | {fmt(k)} | {k / floor:.2f} | {ey:.1e} | {eh:.1e} |")
        if ey < 1e-2 and eh < 1e-4 and k < best_ms:
            best, best_ms = cfg, k
    print(f"\nfastest passing config at 64k: {best} ({fmt(best_ms)} ms; time2 {fmt(k0)} ms)\n")
    return best


def _regs(t, cfg) -> int:
    """Registers per thread of the compiled specialisation (cuFuncGetAttribute NUM_REGS = 4)."""
    src = ss_cuda.source(torch.bfloat16, torch.float32 if cfg[4] else torch.bfloat16, *cfg[:4], cfg[5], cfg[6], has_d=True,
                         has_z=True, has_bias=True, softplus=True, has_h0=False, vec=True)
    f = ss_cuda._function(t["u"].device, src)
    v = ctypes.c_int()
    ss_cuda._cuda().cuFuncGetAttribute(ctypes.byref(v), 4, f.func)
    return v.value


def lengths_table(ceil, cfg, lengths: str) -> None:
    print(f"## lengths, batch 1, d_inner 4096, N 16, bf16: cuda {cfg} vs triton time2")
    print("| L | time2 ms | cuda ms | speed-up | floor ms (bytes / exps) | cuda ÷ floor |")
    print("|---|---|---|---|---|---|")
    for L in map(int, lengths.split(",")):
        t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
        k0 = ms(lambda: ss_triton.selective_scan_fwd(**t, variant="time2"), rep=30)
        k = ms(lambda: ss_cuda.selective_scan_fwd_cuda(**t, config=cfg), rep=30)
        floor, fb, fe = ss_floor(ceil, L)
        print(f"| {L} | {fmt(k0)} | {fmt(k)} | {k0 / k:.2f}x | {floor:.3f} ({fb:.3f} / {fe:.3f}) | {k / floor:.2f} |")
        del t
        torch.cuda.empty_cache()


def train_table(ceil, lengths: str) -> None:
    """The training forward (states every TB steps + pre-gate y): CUDA vs time2, and the time backward."""
    from evalkit.kernels.selective_scan.triton import TIME_TRAIN_FWD_CONFIG
    from evalkit.kernels.selective_scan.triton_bwd import TIME_BWD_CONFIG, selective_scan_bwd_time

    TB = TIME_BWD_CONFIG[0]
    bd, nw = TIME_TRAIN_FWD_CONFIG
    print(f"## training forward (states every {TB} steps + pre-gate y) and the time backward, batch 1, "
          "d_inner 4096, N 16, bf16")
    print("| L | time2 train fwd ms | cuda train fwd ms | speed-up | states rel | ypre rel | bwd ms | bwd ÷ cuda "
          "inference fwd | fwd + bwd ms (cuda) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for L in map(int, lengths.split(",")):
        t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
        a = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None, TB)
        yp, yp2 = torch.empty_like(t["u"]), torch.empty_like(t["u"])
        _, _, st = ss_cuda.selective_scan_fwd_cuda_train(*a, yp)
        _, _, st2 = ss_triton.selective_scan_fwd(**t, variant="time2", chunk=TB, block_d=bd, num_warps=nw,
                                                 store_states=True, ypre=yp2)
        es, ey = rel(st, st2), rel(yp, yp2)
        k2 = ms(lambda: ss_triton.selective_scan_fwd(**t, variant="time2", chunk=TB, block_d=bd, num_warps=nw,
                                                     store_states=True, ypre=yp2), rep=50)
        kc = ms(lambda: ss_cuda.selective_scan_fwd_cuda_train(*a, yp), rep=50)
        ki = ms(lambda: ss_cuda.selective_scan_fwd_cuda(**t), rep=50)
        gy = torch.randn_like(t["u"])
        kb = ms(lambda: selective_scan_bwd_time(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                                t["delta_bias"], None, st, yp, gy, None), rep=50)
        print(f"| {L} | {fmt(k2)} | {fmt(kc)} | {k2 / kc:.2f}x | {es:.1e} | {ey:.1e} | {fmt(kb)} | {kb / ki:.2f} | "
              f"{fmt(kc + kb)} |")
        del t, yp, yp2, st, st2, gy
        torch.cuda.empty_cache()
    print()


def header() -> dict:
    """Print the device, torch and NVRTC versions and the ceilings measured now; return the ceilings."""
    ver = ctypes.c_int(), ctypes.c_int()
    ss_cuda._nvrtc().nvrtcVersion(ctypes.byref(ver[0]), ctypes.byref(ver[1]))
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; NVRTC {ver[0].value}.{ver[1].value}")
    ceil = ceilings()
    print(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s, exp2 {ceil['exp2_per_s'] / 1e12:.2f} T/s\n")
    return ceil


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="", help="K:ROWS:WARPS:UNROLL:BC32:TWOPASS:PREFETCH,... (default: the sweep list)")
    ap.add_argument("--lengths", default="4096,16384,65536,262144,1048576")
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--train", default="", help="only the training-forward table at these lengths")
    a = ap.parse_args()
    configs = [_cfg(c) for c in a.configs.split(",")] if a.configs else CONFIGS
    configs = [ss_cuda.CONFIG] + [c for c in configs if c != ss_cuda.CONFIG]
    ceil = header()
    if a.train:
        train_table(ceil, a.train)
        return
    ok = True if a.no_checks else checks([ss_cuda.CONFIG, (8, 1, 1, 1, False, False, False),
                                          (16, 2, 1, 1, False, True, True), (16, 1, 4, 2, True, True, False),
                                          (8, 4, 4, 1, False, False, True)])
    best = sweep(ceil, configs)
    if best:
        lengths_table(ceil, best, a.lengths)
    print("checks:", "all passed" if ok else "FAILURES")


if __name__ == "__main__":
    main()
