"""The time-layout selective-scan training pair on the GPU: the time2 forward storing block-entry states
and the pre-gate y (``selective_scan_fwd(..., variant="time2", store_states=True, ypre=...)``) and the
backward in the same layout (``triton_bwd.selective_scan_bwd_time``).

1. checks the pair against the reference's autograd (fp32 reference; fp32 and bf16 inputs, odd
   lengths, an initial state, y and the final state both carrying gradient; every input's gradient);
2. sweeps (TB, BD, warps) of the time backward at L = 16k and 64k (batch 1, d_inner 4096, state 16,
   bf16, with D, z, bias, softplus; the training forward runs with the same TB), then the training
   forward's (BD, warps) at the best TB;
3. a length table: inference forward (time2, no states), training forward (time2 + states + y), time
   backward (best config), the v3 pair (walk storing states + v3 backward), the autograd round trip
   with the best configs, and the ratios backward ÷ inference forward (target ≤ 3) and
   (time fwd + bwd) ÷ (v3 fwd + bwd).

    PYTHONPATH=. python kernels/scan_bwd_time.py [--lengths 4096,16384,65536]
    TRITON_INTERPRET=1 PYTHONPATH=. python kernels/scan_bwd_time.py --smoke   # tiny shapes, CPU

Times are medians of triton.testing.do_bench (``kernels.bench.ms``); under ``--smoke`` on a CPU, one
wall-clock run each (the interpreter: meaningless as speed, only a crash test).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

if "--smoke" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import kernels.bench as bench  # noqa: E402
from evalkit.kernels.selective_scan import selective_scan_ref  # noqa: E402
from evalkit.kernels.selective_scan import triton as ss_triton  # noqa: E402
from evalkit.kernels.selective_scan import triton_bwd as ss_bwd  # noqa: E402
from kernels.bench import ceilings, fmt, ms, rel, ss_floor, ss_inputs  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
SHORT = ("gu", "gΔ", "gA", "gB", "gC", "gD", "gz", "gbias", "gh0")
# (TB, BD, warps, unrolled state loop) of the time backward; the first is triton_bwd.TIME_BWD_CONFIG's
# default. Session 6 (results-h200-v7.md, run 3) swept 2-8 warps with BD 8-64 (TB 128 / BD 16 / 4 warps
# best, TB 64 / BD 8 / 2 warps better than 4 warps); session 7 (v8) sweeps one- and two-warp programs:
# no cross-warp channel reductions (no block barriers), 8-16 (t, d) pairs per thread (offline sm_90:
# 128/4/1 255 registers + 208 B stack, 128/2/1 207 registers, 32/8/1 192, 64/4/1 186, no stack); run 1
# made 128/4/1 the default (results-h200-v8.md).
CONFIGS = [(128, 4, 1, False), (128, 16, 4, False), (256, 2, 1, False), (128, 2, 1, False), (64, 8, 2, False),
           (64, 4, 1, False)]
# (BD, warps) of the training forward (time2 storing states and y), tried at the best backward TB; the
# first is triton.TIME_TRAIN_FWD_CONFIG's default
FWD_CONFIGS = [(4, 1), (16, 4), (8, 2), (2, 1)]
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def wall_ms(fn, rep=0) -> float:
    """One timed run (the interpreter's smoke test: no CUDA events)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def train_fwd(t, TB, fwd_cfg=None, h0=None):
    """time2 forward storing the block-entry states and the pre-gate y: (y, final, states, ypre)."""
    BD, nw = fwd_cfg or ss_triton.TIME_TRAIN_FWD_CONFIG
    ypre = torch.empty_like(t["u"], memory_format=torch.contiguous_format)
    y, hT, st = ss_triton.selective_scan_fwd(**t, initial_state=h0, variant="time2", chunk=TB, block_d=BD,
                                             num_warps=nw, store_states=True, ypre=ypre)
    return y, hT, st, ypre


def time_bwd(t, st, ypre, gy, gT, cfg, h0=None):
    TB, BD, nw, unroll = cfg
    return ss_bwd.selective_scan_bwd_time(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                          t["delta_bias"], h0, st, ypre, gy, gT, chunk=TB, block_d=BD,
                                          num_warps=nw, unroll_n=unroll)


def v3_fwd(t):
    return ss_triton.selective_scan_fwd(**t, variant="scan", chunk=ss_triton.BWD_CHUNK, store_states=True)


def v3_bwd(t, st, gy):
    return ss_bwd.selective_scan_bwd(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                     None, st, gy, None, chunk=ss_triton.BWD_CHUNK)


def checks(shapes, dtypes, cfgs) -> bool:
    print("## checks: time2 forward with states + time backward vs the reference's autograd (fp32 reference)")
    print("rel = ‖kernel − reference‖ / ‖reference‖; tolerances: fp32 1e-4, bf16 3e-2 (fp16 5e-3)")
    print("| shape | dtype | TB, BD, warps, unrolled | y | final | " + " | ".join(SHORT) + " | ok |")
    print("|---|---|---|---|---|" + "---|" * len(SHORT) + "---|")
    ok_all = True
    for (b, d, L, n) in shapes:
        for dtype in dtypes:
            t = ss_inputs(b, d, L, n, dtype, seed=L + d)
            h0 = torch.randn(b, d, n, device=bench.DEV)
            f = {k: v.detach().float().requires_grad_(True) for k, v in {**t, "initial_state": h0}.items()}
            yr, hr = selective_scan_ref(**f, return_final_state=True)
            wy = torch.randn_like(yr).to(dtype)  # the gradient of y arrives in y's dtype
            wh = torch.randn_like(hr)
            gr = torch.autograd.grad((yr * wy.float()).sum() + (hr * wh).sum(), list(f.values()))
            for cfg in cfgs:
                y, hT, st, ypre = train_fwd(t, cfg[0], h0=h0)
                g = time_bwd(t, st, ypre, wy, wh, cfg, h0=h0)
                errs = [rel(y, yr), rel(hT, hr)] + [rel(a, r) for a, r in zip(g, gr)]
                tol = TOL[dtype]
                good = all(e < (1e-4 if i == 1 else tol) for i, e in enumerate(errs))  # state: fp32 always
                ok_all &= good
                print(f"| B{b}-D{d}-L{L}-N{n} | {str(dtype)[6:]} | {cfg} | " + " | ".join(f"{e:.1e}" for e in errs)
                      + f" | {'ok' if good else 'FAIL'} |")
            del t, f, gr
    print()
    return ok_all


def sweep(timer, d, n, lengths, cfgs, dtype):
    """Time backward configs (and the training forward at each config's TB): {(L, cfg): (fwd, bwd, rel)}."""
    res = {}
    for L in lengths:
        t = ss_inputs(1, d, L, n, dtype, seed=L)
        gy = torch.randn(1, d, L, device=bench.DEV).to(dtype)
        base = None
        for cfg in cfgs:
            try:
                _, _, st, ypre = train_fwd(t, cfg[0])
                g = time_bwd(t, st, ypre, gy, None, cfg)
                base = base if base is not None else g
                err = max(rel(a, r) for a, r in zip(g, base) if a is not None)
                fw = timer(lambda: train_fwd(t, cfg[0]), rep=50)
                bw = timer(lambda: time_bwd(t, st, ypre, gy, None, cfg), rep=50)
            except Exception as e:  # noqa: BLE001  (a config that fails to compile is reported, not fatal)
                res[(L, cfg)] = (None, None, type(e).__name__)
                continue
            res[(L, cfg)] = (fw, bw, err)
            del st, ypre, g
        del t, gy, base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (under the interpreter on a CPU)")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--configs", default="", help="backward configs to sweep instead of CONFIGS, e.g. "
                    "128:4:1:0,256:2:1:0 (TB:BD:warps:unrolled)")
    ap.add_argument("--fwd-configs", default="", help="training-forward configs instead of FWD_CONFIGS, "
                    "e.g. 4:1,2:1 (BD:warps)")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    else:
        bench.DEV = "cpu"  # ss_inputs and the tensors here
        interp = os.environ.get("TRITON_INTERPRET") == "1"
        print(f"device: cpu (Triton interpreter: {interp}); torch {torch.__version__}")
    import triton

    print(f"triton {triton.__version__}; defaults: time backward (TB, BD, warps) {ss_bwd.TIME_BWD_CONFIG}, "
          f"training forward (BD, warps) {ss_triton.TIME_TRAIN_FWD_CONFIG}, inference time2 "
          f"{ss_triton.VARIANT_CONFIG['time2']}, v3 chunk {ss_triton.BWD_CHUNK}")
    timer = ms if cuda else wall_ms
    if a.smoke:
        d, n, dtype = 8, 4, torch.float32
        shapes, dtypes = [(1, 8, 45, 4), (2, 5, 33, 8)], [torch.float32, torch.float16]
        sweep_L, lengths, cfgs = (64, 100), [64, 130], [(16, 4, 4, False), (32, 8, 4, False), (16, 2, 2, True)]
        fwd_cfgs = FWD_CONFIGS[:2]
    else:
        d, n, dtype = 4096, 16, torch.bfloat16
        shapes, dtypes = [(1, 4096, 4099, 16), (2, 96, 1000, 16), (2, 37, 777, 8)], [torch.float32, torch.bfloat16]
        sweep_L, lengths, cfgs = (16384, 65536), list(map(int, a.lengths.split(","))), CONFIGS
        fwd_cfgs = FWD_CONFIGS
        if a.configs:
            cfgs = [tuple(int(v) for v in c.split(":")[:3]) + (c.split(":")[3:] == ["1"],)
                    for c in a.configs.split(",")]
        if a.fwd_configs:
            fwd_cfgs = [tuple(int(v) for v in c.split(":")) for c in a.fwd_configs.split(",")]
    ceil = ceilings() if cuda else None
    if ceil:
        print(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s, exp2 {ceil['exp2_per_s'] / 1e12:.2f} T/s")
    print()
    ok = True
    if not a.skip_checks:
        other = (16, 2, 2, True) if a.smoke else (256, 2, 1, False)
        ok = checks(shapes, dtypes, [ss_bwd.TIME_BWD_CONFIG, other])

    # ---- backward config sweep
    L1, L2 = sweep_L
    print(f"## time backward configs, batch 1, d_inner {d}, state {n}, {str(dtype)[6:]}, D/z/bias/softplus "
          f"(training forward at the same TB with (BD, warps) {ss_triton.TIME_TRAIN_FWD_CONFIG})")
    print(f"| TB | BD | warps | unrolled | train fwd ms {L1} | bwd ms {L1} | train fwd ms {L2} | bwd ms {L2} | "
          f"fwd+bwd {L2} | rel vs first |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    res = sweep(timer, d, n, sweep_L, cfgs, dtype)
    best, best_ms = None, float("inf")
    for cfg in cfgs:
        f1, b1, e1 = res[(L1, cfg)]
        f2, b2, e2 = res[(L2, cfg)]
        errs = [e for e in (e1, e2)]
        err = next((e for e in errs if isinstance(e, str)), None) or f"{max(errs):.1e}"
        tot = f2 + b2 if f2 is not None and b2 is not None else None
        print(f"| {cfg[0]} | {cfg[1]} | {cfg[2]} | {cfg[3]} | {fmt(f1)} | {fmt(b1)} | {fmt(f2)} | {fmt(b2)} | "
              f"{fmt(tot)} | {err} |")
        if tot is not None and not isinstance(e2, str) and e2 < 2e-2 and tot < best_ms:
            best, best_ms = cfg, tot
    if best is None:
        print("no backward config worked")
        print("checks:", "all passed" if ok else "FAILURES")
        return
    print(f"\nbest backward config (train fwd + bwd at {L2}): TB, BD, warps, unrolled = {best}\n")

    # ---- training forward (BD, warps) at the best TB
    print(f"## training forward (time2 + states + pre-gate y) at TB {best[0]}, L {L2}")
    print("| BD | warps | ms |")
    print("|---|---|---|")
    t = ss_inputs(1, d, L2, n, dtype, seed=L2)
    best_fwd, best_fwd_ms = ss_triton.TIME_TRAIN_FWD_CONFIG, float("inf")
    for fc in fwd_cfgs:
        try:
            k = timer(lambda: train_fwd(t, best[0], fc), rep=50)
        except Exception as e:  # noqa: BLE001
            print(f"| {fc[0]} | {fc[1]} | failed: {type(e).__name__} |")
            continue
        print(f"| {fc[0]} | {fc[1]} | {fmt(k)} |")
        if k < best_fwd_ms:
            best_fwd, best_fwd_ms = fc, k
    del t
    print(f"\nbest training forward (BD, warps): {best_fwd}\n")

    # ---- length table
    print(f"## selective_scan training, batch 1, d_inner {d}, state {n}, {str(dtype)[6:]}: time pair "
          f"(bwd {best}, train fwd {best_fwd}) vs v3")
    print("| L | inference fwd ms | train fwd ms | time bwd ms | v3 fwd ms | v3 bwd ms | autograd fwd+bwd ms | "
          "bwd ÷ inference fwd | (fwd+bwd) ÷ v3 (fwd+bwd) | fwd floor ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    saved = ss_bwd.TIME_BWD_CONFIG, ss_triton.TIME_TRAIN_FWD_CONFIG
    ss_bwd.TIME_BWD_CONFIG, ss_triton.TIME_TRAIN_FWD_CONFIG = best, best_fwd
    try:
        for L in lengths:
            t = ss_inputs(1, d, L, n, dtype, seed=L)
            gy = torch.randn(1, d, L, device=bench.DEV).to(dtype)
            inf = timer(lambda: ss_triton.selective_scan_fwd(**t), rep=50)
            tf = timer(lambda: train_fwd(t, best[0], best_fwd), rep=50)
            _, _, st, ypre = train_fwd(t, best[0], best_fwd)
            tb = timer(lambda: time_bwd(t, st, ypre, gy, None, best), rep=50)
            del st, ypre
            vf = timer(lambda: v3_fwd(t), rep=50)
            st3 = v3_fwd(t)[2]
            vb = timer(lambda: v3_bwd(t, st3, gy), rep=50)
            del st3
            tg = {k: v.detach().requires_grad_(True) for k, v in t.items()}
            ag = timer(lambda: torch.autograd.grad(ss_triton.selective_scan(**tg), list(tg.values()), gy), rep=50)
            floor = f"{ss_floor(ceil, L, d, n)[0]:.3f}" if ceil else "–"
            print(f"| {L} | {fmt(inf)} | {fmt(tf)} | {fmt(tb)} | {fmt(vf)} | {fmt(vb)} | {fmt(ag)} | "
                  f"{tb / inf:.2f} | {(tf + tb) / (vf + vb):.2f} | {floor} |")
            del t, gy, tg
            if cuda:
                torch.cuda.empty_cache()
    finally:
        ss_bwd.TIME_BWD_CONFIG, ss_triton.TIME_TRAIN_FWD_CONFIG = saved
    print("checks:", "skipped" if a.skip_checks else "all passed" if ok else "FAILURES")


if __name__ == "__main__":
    main()
