"""The CUDA (NVRTC) selective-scan backward (``evalkit/kernels/selective_scan/cuda_bwd.py``, kernels/NOTES.md
v11) on the GPU, in one run:

1. checks the CUDA training pair (the CUDA forward storing the state every 32·K steps and the pre-gate y,
   then the CUDA backward) against the reference's autograd (fp32 reference; fp32 / fp16 / bf16 inputs,
   odd and aligned lengths, N 4-32, an initial state, y and the final state both carrying gradient,
   without D / z / bias / softplus, the mixer's strided views; every input's gradient), for each config
   given, and the public ``selective_scan`` autograd path (which backward ran);
2. sweeps (K, ROWS, WARPS) at the issue's shape (batch 1, d_inner 4096, N 16, bf16, L 64k) beside the
   Triton time backward;
3. a length table for the fastest config: inference forward, training forward, the CUDA and Triton
   backwards, backward ÷ inference forward (the issue's target: ≤ 3), and the training pairs.

    PYTHONPATH=. python kernels/scan_cuda_bwd.py [--configs 8:2:4:1,16:1:4:0,8:2:4:1:3] [--lengths 4096,16384,65536]
    PYTHONPATH=. python kernels/scan_cuda_bwd.py --big 589824    # 64-bit offsets: against the Triton backward
"""

from __future__ import annotations

import argparse
import ctypes

import torch

from evalkit.kernels import dispatch
from evalkit.kernels.selective_scan import cuda as ss_cuda
from evalkit.kernels.selective_scan import cuda_bwd
from evalkit.kernels.selective_scan import selective_scan, selective_scan_ref
from evalkit.kernels.selective_scan.triton_bwd import TIME_BWD_CONFIG, selective_scan_bwd_time
from kernels.bench import fmt, ms, rel, ss_floor, ss_inputs
from kernels.scan_cuda import header

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
SHORT = ("gu", "gΔ", "gA", "gB", "gC", "gD", "gz", "gbias", "gh0")
# (K, ROWS, WARPS, 16-byte slots). Run 1 (results-h200-v11.md) swept the first eight with 4-byte slots.
CONFIGS = [(16, 1, 4, False), (16, 1, 8, False), (8, 2, 4, False), (8, 2, 8, False), (8, 1, 4, False),
           (8, 1, 8, False), (16, 1, 2, False), (16, 2, 2, False), (8, 2, 4, True), (16, 1, 4, True),
           (16, 1, 8, True), (8, 2, 2, True), (8, 2, 2, False), (8, 1, 4, True)]
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _cfg(s: str) -> tuple:
    """K:ROWS:WARPS[:V4[:MINB[:PAIRBAR[:TSCAN[:SBC[:SIN]]]]]] as ints (``cuda_bwd._full`` says what each option
    does)."""
    f = [int(x) for x in s.split(":")]
    return tuple(bool(v) if i in (3, 5, 6, 7, 8) else v for i, v in enumerate(f))


def pair(t, cfg, h0=None, gy=None, gT=None, softplus=True):
    """The CUDA training forward (states every 32·K steps) and the CUDA backward: (y, final, grads)."""
    z = t.get("z")
    ypre = torch.empty_like(t["u"], memory_format=torch.contiguous_format) if z is not None else None
    y, hT, st = ss_cuda.selective_scan_fwd_cuda_train(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"), z,
                                                      t.get("delta_bias"), softplus, h0, cuda_bwd.store_tb(cfg), ypre)
    g = cuda_bwd.selective_scan_bwd_cuda(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"), z,
                                         t.get("delta_bias"), h0, st, ypre, gy, gT, delta_softplus=softplus,
                                         config=cfg)
    return y, hT, g


def checks(cfgs) -> bool:
    print("## checks: CUDA training forward + CUDA backward vs the reference's autograd (fp32 reference)")
    print("rel = ‖kernel − reference‖ / ‖reference‖; tolerances: fp32 1e-4, fp16 5e-3, bf16 3e-2 "
          "(final state 1e-4)")
    print("| case | dtype | K, ROWS, WARPS | y | final | " + " | ".join(SHORT) + " | ok |")
    print("|---|---|---|---|---|" + "---|" * len(SHORT) + "---|")
    ok_all = True

    def one(name, t, dtype, cfgs_, softplus=True, with_h0=True):
        nonlocal ok_all
        b, d, L = t["u"].shape
        n = t["A"].shape[1]
        h0 = torch.randn(b, d, n, device="cuda") if with_h0 else None
        ins = {**t, "initial_state": h0} if with_h0 else dict(t)
        f = {k: v.detach().float().requires_grad_(True) for k, v in ins.items()}
        yr, hr = selective_scan_ref(**f, delta_softplus=softplus, return_final_state=True)
        wy = torch.randn_like(yr).to(dtype)
        wh = torch.randn_like(hr)
        gr = torch.autograd.grad((yr * wy.float()).sum() + (hr * wh).sum(), list(f.values()))
        gr = dict(zip(f.keys(), gr))
        for cfg in cfgs_:
            y, hT, g = pair(t, cfg, h0=h0, gy=wy, gT=wh, softplus=softplus)
            g = dict(zip(NAMES, g))
            errs = [rel(y, yr), rel(hT, hr)] + [rel(g[k], gr[k]) if k in gr else float("nan") for k in NAMES]
            tol = TOL[dtype]
            good = all((e < (1e-4 if i == 1 else tol)) for i, e in enumerate(errs) if e == e)
            ok_all &= good
            print(f"| {name} | {str(dtype)[6:]} | {cfg} | " + " | ".join(f"{e:.1e}" if e == e else "–" for e in errs)
                  + f" | {'ok' if good else 'FAIL'} |")

    for (b, d, L, n) in ((1, 4096, 4099, 16), (2, 96, 1000, 16), (2, 37, 777, 8), (1, 64, 63, 32),
                         (3, 33, 2048, 4), (2, 130, 4096, 16), (1, 300, 20000, 16)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            t = ss_inputs(b, d, L, n, dtype, seed=L + d)
            one(f"B{b}-D{d}-L{L}-N{n} h0", t, dtype, cfgs)
        bare = {k: t[k] for k in ("u", "delta", "A", "B", "C")}
        bare["delta"] = torch.nn.functional.softplus(bare["delta"].float()).to(torch.bfloat16)
        one(f"B{b}-D{d}-L{L}-N{n} no D/z/bias/softplus/h0", bare, torch.bfloat16, cfgs[:1], softplus=False,
            with_h0=False)
    # the native mixer's layout: u, z halves of xz; B, C slices of x_proj's output
    b, d, L, n = 2, 512, 4096, 16
    t = ss_inputs(b, d, L, n, torch.bfloat16, seed=3)
    xz = torch.randn(b, 2 * d, L, device="cuda", dtype=torch.bfloat16)
    t["u"], t["z"] = xz.chunk(2, dim=1)
    dbc = torch.randn(b, 48 + 2 * n, L, device="cuda", dtype=torch.bfloat16)
    _, t["B"], t["C"] = dbc.split([48, n, n], dim=1)
    one("mixer views (xz.chunk, x_proj split)", t, torch.bfloat16, cfgs)
    # the public autograd path
    t = ss_inputs(2, 256, 3000, 16, torch.bfloat16, seed=9, grad=True)
    before = dispatch.variant_calls()
    y = selective_scan(**t)
    wy = torch.randn_like(y)
    g = torch.autograd.grad((y.float() * wy.float()).sum(), list(t.values()))
    used = {k for k, v in dispatch.variant_calls().items() if v > before.get(k, 0)}
    f = {k: v.detach().float().requires_grad_(True) for k, v in t.items()}
    yr = selective_scan_ref(**f)
    gr = torch.autograd.grad((yr * wy.float()).sum(), list(f.values()))
    errs = [rel(a, r) for a, r in zip(g, gr)]
    good = max(errs) < TOL[torch.bfloat16] and "selective_scan_bwd:cuda" in used
    ok_all &= good
    print(f"| selective_scan autograd ({', '.join(sorted(used))}) | bfloat16 | default | {rel(y, yr):.1e} | – | "
          + " | ".join(f"{e:.1e}" for e in errs[:8]) + f" | – | {'ok' if good else 'FAIL'} |")
    print()
    return ok_all


def _regs(t, cfg) -> int:
    full = cuda_bwd._full(cfg)
    src = cuda_bwd.source(torch.bfloat16, torch.bfloat16, *full, has_d=True, has_z=True, has_bias=True,
                          softplus=True, vec=True)
    f = ss_cuda._function(t["u"].device, src, "evalkit_selective_scan_bwd")
    v = ctypes.c_int()
    ss_cuda._cuda().cuFuncGetAttribute(ctypes.byref(v), 4, f.func)
    return v.value


def _train_fwd(t, tb):
    ypre = torch.empty_like(t["u"])
    y, hT, st = ss_cuda.selective_scan_fwd_cuda_train(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                                      t["delta_bias"], True, None, tb, ypre)
    return st, ypre


def _cuda_bwd(t, st, ypre, gy, cfg):
    return cuda_bwd.selective_scan_bwd_cuda(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                            t["delta_bias"], None, st, ypre, gy, None, config=cfg)


def _triton_bwd(t, st, ypre, gy):
    return selective_scan_bwd_time(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                   None, st, ypre, gy, None)


def sweep(cfgs, L=65536):
    t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
    gy = torch.randn_like(t["u"])
    TB = TIME_BWD_CONFIG[0]
    st_t, yp_t = _train_fwd(t, TB)
    g_t = _triton_bwd(t, st_t, yp_t, gy)
    kt = ms(lambda: _triton_bwd(t, st_t, yp_t, gy), rep=30)
    ki = ms(lambda: ss_cuda.selective_scan_fwd_cuda(**t), rep=50)
    print(f"## backward config sweep at L = {L} (batch 1, d_inner 4096, N 16, bf16; rel: against the Triton time "
          "backward)")
    print(f"CUDA inference forward {fmt(ki)} ms; Triton time backward {TIME_BWD_CONFIG}: {fmt(kt)} ms "
          f"({kt / ki:.2f}x the forward)")
    print("| K:ROWS:WARPS:V4[:MINB[:PAIRBAR[:TSCAN[:SBC[:SIN]]]]] | regs | train fwd ms | bwd ms | "
          "bwd ÷ inference fwd | "
          "max rel vs Triton |")
    print("|---|---|---|---|---|---|")
    best, best_ms = None, float("inf")
    for cfg in cfgs:
        try:
            st, yp = _train_fwd(t, cuda_bwd.store_tb(cfg))
            g = _cuda_bwd(t, st, yp, gy, cfg)
            kf = ms(lambda: _train_fwd(t, cuda_bwd.store_tb(cfg)), rep=30)
            kb = ms(lambda: _cuda_bwd(t, st, yp, gy, cfg), rep=30)
        except Exception as e:  # noqa: BLE001
            print(f"| {':'.join(map(str, map(int, cfg)))} | | failed: {type(e).__name__}: {e} | | | |")
            continue
        err = max(rel(a, r) for a, r in zip(g, g_t) if a is not None)
        name = ":".join(map(str, map(int, cfg)))
        print(f"| {name} | {_regs(t, cfg)} | {fmt(kf)} | {fmt(kb)} | {kb / ki:.2f} | {err:.1e} |")
        if err < 3e-2 and kb < best_ms:
            best, best_ms = cfg, kb
    print(f"\nfastest config agreeing with Triton: {best} ({fmt(best_ms)} ms)\n")
    return best


def lengths_table(ceil, cfg, lengths: str) -> None:
    print(f"## lengths, batch 1, d_inner 4096, N 16, bf16: CUDA backward {cfg} vs the Triton time backward")
    print("| L | inference fwd ms | exp floor ms | cuda train fwd ms | cuda bwd ms | bwd ÷ fwd | triton bwd ms | "
          "pair now (cuda fwd + cuda bwd) | pair before (cuda fwd tb 128 + triton bwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for L in map(int, lengths.split(",")):
        t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
        gy = torch.randn_like(t["u"])
        ki = ms(lambda: ss_cuda.selective_scan_fwd_cuda(**t), rep=30)
        st, yp = _train_fwd(t, cuda_bwd.store_tb(cfg))
        kf = ms(lambda: _train_fwd(t, cuda_bwd.store_tb(cfg)), rep=30)
        kb = ms(lambda: _cuda_bwd(t, st, yp, gy, cfg), rep=30)
        st_t, yp_t = _train_fwd(t, TIME_BWD_CONFIG[0])
        kf_t = ms(lambda: _train_fwd(t, TIME_BWD_CONFIG[0]), rep=30)
        kt = ms(lambda: _triton_bwd(t, st_t, yp_t, gy), rep=10)
        floor = ss_floor(ceil, L)[0]
        print(f"| {L} | {fmt(ki)} | {floor:.3f} | {fmt(kf)} | {fmt(kb)} | {kb / ki:.2f} | {fmt(kt)} | "
              f"{fmt(kf + kb)} | {fmt(kf_t + kt)} |")
        del t, gy, st, yp, st_t, yp_t
        torch.cuda.empty_cache()
    print()


def _rel_chunked(a: torch.Tensor, b: torch.Tensor) -> float:
    """``rel`` without float64 copies of multi-GB tensors: fp32 chunks, float64 sums."""
    num = den = 0.0
    for x, y in zip(a.reshape(-1).split(1 << 26), b.reshape(-1).split(1 << 26)):
        x, y = x.float(), y.float()
        num += (x - y).square().sum(dtype=torch.float64).item()
        den += y.square().sum(dtype=torch.float64).item()
    return (num / max(den, 1e-60)) ** 0.5


def big(L: int) -> bool:
    """Offsets past 2**31 (d_inner 4096 × L > 2.1 G): the CUDA pair against the Triton time pair (its 64-bit
    paths ran on the GPU in v7), every gradient, and both backwards timed."""
    t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
    gy = torch.randn_like(t["u"])
    st, yp = _train_fwd(t, cuda_bwd.store_tb())
    g = _cuda_bwd(t, st, yp, gy, None)
    kb = ms(lambda: _cuda_bwd(t, st, yp, gy, None), rep=5)
    del st, yp
    st_t, yp_t = _train_fwd(t, TIME_BWD_CONFIG[0])
    g_t = _triton_bwd(t, st_t, yp_t, gy)
    del st_t, yp_t
    errs = [_rel_chunked(a, r) for a, r in zip(g, g_t) if a is not None]
    ok = max(errs) < 1e-3
    print(f"## 64-bit offsets: L = {L}, d_inner 4096 ({4096 * L / 2**31:.2f} × 2**31 elements), bf16")
    print(f"CUDA backward {fmt(kb)} ms; rel vs the Triton time backward: " + ", ".join(f"{e:.1e}" for e in errs)
          + f" — {'ok' if ok else 'FAIL'}\n")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="", help="K:ROWS:WARPS,... (default: the sweep list)")
    ap.add_argument("--lengths", default="4096,16384,65536,262144")
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--big", type=int, default=0, help="only the 64-bit check at this length (e.g. 589824)")
    a = ap.parse_args()
    configs = [_cfg(c) for c in a.configs.split(",")] if a.configs else CONFIGS
    configs = [cuda_bwd.BWD_CONFIG] + [c for c in configs if c != cuda_bwd.BWD_CONFIG]
    ceil = header()
    if a.big:
        print("checks:", "all passed" if big(a.big) else "FAILURES")
        return
    ok = True if a.no_checks else checks([cuda_bwd.BWD_CONFIG, (8, 2, 4, False), (16, 1, 4, True), (8, 2, 2, True)])
    best = sweep(configs)
    if best:
        lengths_table(ceil, best, a.lengths)
    print("checks:", "all passed" if ok else "FAILURES")


if __name__ == "__main__":
    main()
