"""The time-parallel selective-scan forward (``variant="time2"``, kernels/NOTES.md v6) on the GPU:
checks against the reference (fp32 and bf16, odd lengths, an initial state, strided inputs as the
Mamba mixer passes them), a config sweep at L = 16k and 64k, then a length sweep at the issue's shape
(batch 1, d_inner 4096, state 16, bf16) against the v3 walk (``variant="scan"``) and the floor
(max of bytes ÷ measured copy bandwidth and exps ÷ measured exp2 rate, both measured here).

    PYTHONPATH=. python kernels/scan_time.py [--lengths 4096,16384,65536,262144,1048576]
"""

from __future__ import annotations

import argparse

import torch

from evalkit.kernels.selective_scan import selective_scan_ref
from evalkit.kernels.selective_scan import triton as ss_triton
from kernels.bench import ceilings, fmt, ms, rel, ss_floor, ss_inputs

# (variant, steps per block TB, channels per program BD, warps); the first is VARIANT_CONFIG's default.
# The runs of 2026-12-03 also swept the variants "time" and "time3" (removed since: slower;
# kernels/results-h200-v6.md has their numbers) and time2 configs of 2-8 warps (v6 run 2).
CONFIGS = [("time2", 128, 4, 1), ("time2", 128, 32, 8), ("time2", 256, 2, 1)]
# Session 7's run 1 swept time2 (128, 32, 8), (32, 8, 1), (16, 32, 2), (16, 16, 1), (16, 64, 4), (32, 32, 4),
# (64, 16, 4), (64, 4, 1), (128, 2, 1) (8 pairs per thread: all slower); run 2 timed (128, 4, 1) 5.08 ms,
# (256, 2, 1) 5.60, (128, 8, 2) 6.96, (128, 32, 8) 6.49 at 64k (kernels/results-h200-v8.md).
# Session 8 (v9) timed a "chain" variant with this script (kernels/results-h200-v9.md; removed since: slower).


def _kw(cfg) -> dict:
    var, TB, BD, nw = cfg
    return dict(variant=var, chunk=TB, block_d=BD, num_warps=nw)


def checks() -> bool:
    print("| check | dtype | config | y rel | final rel | ok |")
    print("|---|---|---|---|---|---|")
    ok_all = True
    for (b, d, L, n) in ((1, 4096, 4099, 16), (2, 96, 1000, 16), (1, 300, 20000, 16), (2, 37, 777, 8)):
        for dtype in (torch.float32, torch.bfloat16):
            t = ss_inputs(b, d, L, n, dtype, seed=L + d)
            h0 = torch.randn(b, d, n, device="cuda")
            f = {k: v.float() for k, v in t.items()}
            y_ref, h_ref = selective_scan_ref(**f, initial_state=h0, return_final_state=True)
            for cfg in CONFIGS:
                y, hT, _ = ss_triton.selective_scan_fwd(**t, initial_state=h0, **_kw(cfg))
                ey, eh = rel(y, y_ref), rel(hT, h_ref)
                good = ey < (1e-5 if dtype == torch.float32 else 1e-2) and eh < 1e-4
                ok_all &= good
                print(f"| B{b}-D{d}-L{L}-N{n} | {str(dtype)[6:]} | {cfg} | {ey:.1e} | {eh:.1e} | "
                      f"{'ok' if good else 'FAIL'} |")
    # strided inputs (as transformers' Mamba passes them): Δ and z (B, L, D) seen as (B, D, L), B, C (B, L, N)
    # seen as (B, N, L); time2 forced (the default would take the v3 walk for such views)
    b, d, L, n = 2, 512, 3001, 16
    t = ss_inputs(b, d, L, n, torch.bfloat16, seed=3)
    for k in ("delta", "z"):
        t[k] = t[k].transpose(1, 2).contiguous().transpose(1, 2)
    for k in ("B", "C"):
        t[k] = t[k].transpose(1, 2).contiguous().transpose(1, 2)
    y_ref, h_ref = selective_scan_ref(**{k: v.float() for k, v in t.items()}, return_final_state=True)
    y, hT, _ = ss_triton.selective_scan_fwd(**t, variant="time2")
    ey, eh = rel(y, y_ref), rel(hT, h_ref)
    good = ey < 1e-2 and eh < 1e-4
    ok_all &= good
    print(f"| strided B{b}-D{d}-L{L}-N{n} | bfloat16 | time2 | {ey:.1e} | {eh:.1e} | {'ok' if good else 'FAIL'} |")
    print()
    return ok_all


def _parse(c: str) -> dict:
    var, TB, BD, nw, *mr = c.split(":")
    kw = _kw((var, int(TB), int(BD), int(nw)))
    if mr:  # time2: a register cap
        kw["maxnreg"] = int(mr[0])
    return kw


def warm(config: str, lengths: str) -> None:
    """Compile one config (run it once at each length, bf16, d_inner 4096): run several of these as
    background processes to fill Triton's cache in parallel before a timing run."""
    for L in map(int, lengths.split(",")):
        t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
        ss_triton.selective_scan_fwd(**t, **_parse(config))
        torch.cuda.synchronize()
        del t


def lengths_table(ceil, kw: dict, lengths: str, walk: bool = True) -> None:
    print("## selective_scan forward, batch 1, d_inner 4096, state 16, bf16: v3 walk vs the best config")
    print(f"config: {kw}")
    print("| L | scan (v3) ms | best ms | speed-up | floor ms (bytes / exps) | time ÷ floor |")
    print("|---|---|---|---|---|---|")
    for L in map(int, lengths.split(",")):
        t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=L)
        k0 = ms(lambda: ss_triton.selective_scan_fwd(**t, variant="scan"), rep=50) if walk else None
        k = ms(lambda: ss_triton.selective_scan_fwd(**t, **kw), rep=50)
        floor, fb, fe = ss_floor(ceil, L)
        print(f"| {L} | {fmt(k0) if k0 else '–'} | {fmt(k)} | {f'{k0 / k:.1f}x' if k0 else '–'} | "
              f"{floor:.3f} ({fb:.3f} / {fe:.3f}) | {k / floor:.2f} |")
        del t
        torch.cuda.empty_cache()


def quick(ceil, configs: str) -> dict | None:
    """Check then time each config at L = 64k (bf16, the issue's shape); returns the fastest that
    passed its check."""
    L, d, n = 65536, 4096, 16
    t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
    ref = selective_scan_ref(**{k: v.float() for k, v in t.items()}, return_final_state=True)
    floor = ss_floor(ceil, L)[0]
    print("| variant | TB | BD | warps | maxnreg | ms 64k | ÷ floor | y rel | final rel |")
    print("|---|---|---|---|---|---|---|---|---|")
    best, best_ms = None, float("inf")
    for c in configs.split(","):
        var, TB, BD, nw, *mr = c.split(":")
        kw = _parse(c)
        try:
            y, hT, _ = ss_triton.selective_scan_fwd(**t, **kw)
            k = ms(lambda: ss_triton.selective_scan_fwd(**t, **kw), rep=100)
        except Exception as e:  # noqa: BLE001
            print(f"| {var} | {TB} | {BD} | {nw} | {mr} | failed: {type(e).__name__} | | | |")
            continue
        ey, eh = rel(y, ref[0]), rel(hT, ref[1])
        print(f"| {var} | {TB} | {BD} | {nw} | {mr[0] if mr else '–'} | {fmt(k)} | {k / floor:.2f} | "
              f"{ey:.1e} | {eh:.1e} |")
        if ey < 1e-2 and eh < 1e-4 and k < best_ms:
            best, best_ms = kw, k
    print(f"\nfastest passing config at 64k: {best}\n")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4096,16384,65536,262144,1048576")
    ap.add_argument("--quick", default="", help="only time these configs at 64k after a check, e.g. "
                    "time2:128:32:8:168 (variant:TB:BD:warps[:maxnreg])")
    ap.add_argument("--quick-lengths", action="store_true",
                    help="after --quick, the length table (--lengths) for its fastest config, no v3 walk")
    ap.add_argument("--warm", default="", help="only compile this config (variant:TB:BD:warps[:x])")
    ap.add_argument("--warm-lengths", default="65536")
    a = ap.parse_args()
    if a.warm:
        warm(a.warm, a.warm_lengths)
        return
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    ceil = ceilings()
    if a.quick:
        best = quick(ceil, a.quick)
        if a.quick_lengths and best:
            lengths_table(ceil, best, a.lengths, walk=False)
        return
    print(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s, exp2 {ceil['exp2_per_s'] / 1e12:.2f} T/s")
    ok = checks()
    d, n = 4096, 16
    print("## selective_scan forward configs, batch 1, d_inner 4096, state 16, bf16")
    print("| variant | TB | BD | warps | ms 16k | ÷ floor | ms 64k | ÷ floor | rel vs scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    best, best_ms = None, float("inf")
    res = {}
    for L in (16384, 65536):
        t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
        base = ss_triton.selective_scan_fwd(**t, variant="scan")[0]
        for cfg in CONFIGS:
            kw = _kw(cfg)
            try:
                err = rel(ss_triton.selective_scan_fwd(**t, **kw)[0], base)
                k = ms(lambda: ss_triton.selective_scan_fwd(**t, **kw), rep=100)
            except Exception as e:  # noqa: BLE001  (a config that does not compile is reported, not fatal)
                res[(L, cfg)] = (None, f"{type(e).__name__}")
                continue
            res[(L, cfg)] = (k, err)
        del t, base
    for cfg in CONFIGS:
        k16, e16 = res.get((16384, cfg), (None, ""))
        k64, _ = res.get((65536, cfg), (None, ""))
        f16, f64 = ss_floor(ceil, 16384)[0], ss_floor(ceil, 65536)[0]
        print(f"| {cfg[0]} | {cfg[1]} | {cfg[2]} | {cfg[3]} | {fmt(k16)} | {k16 / f16 if k16 else 0:.2f} | "
              f"{fmt(k64)} | {k64 / f64 if k64 else 0:.2f} | {e16 if isinstance(e16, str) else f'{e16:.1e}'} |")
        if k64 is not None and not isinstance(e16, str) and e16 < 2e-2 and k64 < best_ms:
            best, best_ms = cfg, k64
    print(f"\nbest config at 64k: {best}\n")
    lengths_table(ceil, _kw(best), a.lengths)
    print("checks:", "all passed" if ok else "FAILURES")


if __name__ == "__main__":
    main()
