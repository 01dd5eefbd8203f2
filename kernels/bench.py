"""Kernel benchmark: check, measure the ceilings, time. One run on a GPU does all of it.

    PYTHONPATH=. python kernels/bench.py [--quick] [--out DIR]

1. checks every Triton kernel against its PyTorch reference on this GPU — forward, the Triton
   backward (every input's gradient) and the decode step, bf16 and fp32, fresh random inputs, odd
   lengths (the Hopper backward-miscompile warning in GPU-NOTES.md is why this runs on the device
   itself) — and native models' logits with kernels vs references;
2. measures the ceilings: device-to-device copy bandwidth, bf16 matmul rate, exp2 rate;
3. times, at the issue's shapes: each forward vs length against the reference and the roofline
   floor (max of bytes ÷ bandwidth, FLOPs ÷ matmul rate, exps ÷ exp2 rate), with a sweep of the
   selective-scan variants and flash-linear-attention's chunk_simple_gla where installed; the
   backward (ratio to the forward); the decode step; the prefill crossover of Mamba / Mamba-2
   layers vs an attention layer (SDPA) at equal width; training tokens/s of zoo models with
   kernels vs references.

Times are medians of triton.testing.do_bench (CUDA events, warm-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.testing import do_bench

from evalkit.kernels.selective_scan import selective_scan_ref, selective_scan_step_ref
from evalkit.kernels.selective_scan import triton as ss_triton
from evalkit.kernels.selective_scan import triton_bwd as ss_bwd
from evalkit.kernels.selective_scan import triton_step as ss_step
from evalkit.kernels.ssd import ssd_ref, ssd_step_ref
from evalkit.kernels.ssd import triton as ssd_triton
from evalkit.kernels.ssd import triton_step as ssd_step

DEV = "cuda"
LINES: list[str] = []


def say(s: str = "") -> None:
    print(s, flush=True)
    LINES.append(s)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------- ceilings
@triton.jit
def _exp2_kernel(x_ptr, o_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    a, b, c, d = x, x + 0.25, x + 0.5, x + 0.75
    for _ in range(ITERS):  # four independent chains, so the SFU, not latency, is the limit
        a = tl.exp2(a * -0.5)
        b = tl.exp2(b * -0.5)
        c = tl.exp2(c * -0.5)
        d = tl.exp2(d * -0.5)
    tl.store(o_ptr + offs, a + b + c + d)


def ceilings() -> dict[str, float]:
    n = 1 << 28  # 512 MiB of bf16 each way
    src = torch.randn(n, device=DEV, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median") * 1e-3
    bw = 2 * n * 2 / t
    del src, dst
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median") * 1e-3
    mm = 2 * 8192 ** 3 / t
    del a, b
    m, iters = 1 << 22, 256
    x = torch.rand(m, device=DEV)
    o = torch.empty_like(x)
    t = do_bench(lambda: _exp2_kernel[(m // 1024,)](x, o, ITERS=iters, BLOCK=1024),
                 warmup=50, rep=300, return_mode="median") * 1e-3
    ex = 4 * iters * m / t
    return {"copy_Bps": bw, "bf16_flops": mm, "exp2_per_s": ex}


# ------------------------------------------------------------------------------- inputs
def ss_inputs(b, d, L, n, dtype, seed, grad=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=DEV)  # noqa: E731
    t = dict(u=r(b, d, L).to(dtype), delta=(r(b, d, L) - 1.0).to(dtype),
             A=-(torch.rand(d, n, generator=g, device=DEV) * 4 + 0.1), B=r(b, n, L).to(dtype),
             C=r(b, n, L).to(dtype), D=r(d), z=r(b, d, L).to(dtype), delta_bias=r(d) * 0.5)
    if grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def ssd_inputs(b, L, h, p, n, dtype, seed, grad=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=DEV)  # noqa: E731
    t = dict(x=r(b, L, h, p).to(dtype), dt=F.softplus(r(b, L, h) - 1.0).to(dtype),
             A=-torch.exp(r(h)), B=r(b, L, 1, n).to(dtype), C=r(b, L, 1, n).to(dtype), D=r(h))
    if grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


# ------------------------------------------------------------------------------- checks
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _row(op, shape, dtype, ey, eh, eg, good):
    say(f"| {op} | {shape} | {str(dtype)[6:]} | {ey:.1e} | {eh:.1e} | {eg:.1e} | {'ok' if good else 'FAIL'} |")


def check_all() -> bool:
    """Forward (both selective-scan variants), Triton backward and decode step vs the references."""
    ok = True
    say("## checks on this GPU (rel = ‖kernel − reference‖ / ‖reference‖, reference in fp32; "
        "grads: worst input, Triton backward)")
    say("| op | shape | dtype | y | final state | grads (worst) | pass |")
    say("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        tol = TOL[dtype]
        for (b, d, L, n) in [(2, 96, 1000, 16), (1, 300, 4099, 16), (2, 64, 63, 8), (1, 4096, 2000, 16)]:
            t = ss_inputs(b, d, L, n, dtype, seed=L + d, grad=True)
            h0 = torch.randn(b, d, n, device=DEV, requires_grad=True)
            args = {**t, "initial_state": h0}
            y, hT = ss_triton.selective_scan(**args, return_final_state=True)
            f = {k: v.detach().float().requires_grad_(True) for k, v in args.items()}
            yr, hr = selective_scan_ref(**f, return_final_state=True)
            wy, wh = torch.randn_like(yr), torch.randn_like(hr)
            gk = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(args.values()))
            gr = torch.autograd.grad((yr * wy).sum() + (hr * wh).sum(), list(f.values()))
            eg = max(rel(a, r) for a, r in zip(gk, gr))
            ey, eh = rel(y, yr), rel(hT, hr)
            good = ey < tol and eh < tol and eg < 5 * tol
            ok &= good
            _row("selective_scan", f"B{b}-D{d}-L{L}-N{n}", dtype, ey, eh, eg, good)
            with torch.no_grad():  # the step-by-step variant, forward only
                ys, hs, _ = ss_triton.selective_scan_fwd(**{k: v.detach() for k, v in args.items()},
                                                         variant="seq", chunk=16, block_d=16)
            ey, eh = rel(ys, yr), rel(hs, hr)
            good = ey < tol and eh < tol
            ok &= good
            _row("selective_scan seq", f"B{b}-D{d}-L{L}-N{n}", dtype, ey, eh, 0.0, good)
        for (b, L, h, p, n, T) in [(2, 1000, 4, 64, 128, 64), (1, 4099, 16, 64, 128, 64),
                                   (2, 63, 3, 32, 64, 32), (1, 1000, 4, 64, 128, 128),
                                   (1, 1000, 2, 16, 32, 128), (2, 77, 3, 5, 6, 32)]:
            t = ssd_inputs(b, L, h, p, n, dtype, seed=L + h, grad=True)
            h0 = torch.randn(b, h, p, n, device=DEV, requires_grad=True)
            args = {**t, "initial_state": h0}
            y, hT = ssd_triton.ssd(**args, chunk_size=T, return_final_state=True)
            f = {k: v.detach().float().requires_grad_(True) for k, v in args.items()}
            yr, hr = ssd_ref(**f, chunk_size=T, return_final_state=True)
            wy, wh = torch.randn_like(yr), torch.randn_like(hr)
            gk = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(args.values()))
            gr = torch.autograd.grad((yr * wy).sum() + (hr * wh).sum(), list(f.values()))
            eg = max(rel(a, r) for a, r in zip(gk, gr))
            ey, eh = rel(y, yr), rel(hT, hr)
            good = ey < tol and eh < tol and eg < 5 * tol
            ok &= good
            _row("ssd", f"B{b}-L{L}-H{h}-P{p}-N{n}-T{T}", dtype, ey, eh, eg, good)
        # decode steps: one token from a random state (y and the new state)
        for (b, d, n) in [(1, 4096, 16), (3, 100, 16), (2, 64, 5)]:
            g = torch.Generator(device=DEV).manual_seed(d)
            r = lambda *s: torch.randn(*s, generator=g, device=DEV)  # noqa: E731
            st = r(b, d, n)
            kw = dict(u=r(b, d).to(dtype), delta=(r(b, d) - 1).to(dtype), A=-r(d, n).abs() - 0.1,
                      B=r(b, n).to(dtype), C=r(b, n).to(dtype), D=r(d), z=r(b, d).to(dtype), delta_bias=r(d))
            y, hn = ss_step.selective_scan_step(st, **kw)
            yr, hr = selective_scan_step_ref(st, **{k: v.float() for k, v in kw.items()})
            ey, eh = rel(y, yr), rel(hn, hr)
            good = ey < tol and eh < 1e-5
            ok &= good
            _row("selective_scan step", f"B{b}-D{d}-N{n}", dtype, ey, eh, 0.0, good)
        for (b, h, p, n, gr_) in [(1, 64, 64, 128, 1), (3, 6, 5, 6, 2), (2, 4, 16, 32, 1)]:
            g = torch.Generator(device=DEV).manual_seed(h * p)
            r = lambda *s: torch.randn(*s, generator=g, device=DEV)  # noqa: E731
            st = r(b, h, p, n)
            kw = dict(x=r(b, h, p).to(dtype), dt=(r(b, h) - 1).to(dtype), A=-r(h).abs() - 0.1,
                      B=r(b, gr_, n).to(dtype), C=r(b, gr_, n).to(dtype), D=r(h), z=r(b, h, p).to(dtype),
                      dt_bias=r(h))
            y, sn = ssd_step.ssd_step(st, **kw, dt_softplus=True)
            yr, sr = ssd_step_ref(st, **{k: v.float() for k, v in kw.items()}, dt_softplus=True)
            ey, eh = rel(y, yr), rel(sn, sr)
            good = ey < tol and eh < 1e-5
            ok &= good
            _row("ssd step", f"B{b}-H{h}-P{p}-N{n}-G{gr_}", dtype, ey, eh, 0.0, good)
    say()
    return ok


# ------------------------------------------------------------------------------- timing
def ms(fn, rep=200) -> float:
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def try_ms(fn, rep=200) -> float | None:
    try:
        return ms(fn, rep)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def fmt(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def gpu_profile(fn, steps: int) -> tuple[float, float, int, list[tuple[str, float, float]]]:
    """Run ``fn`` ``steps`` times under torch.profiler: (wall ms per step, GPU kernel ms per step,
    kernel launches per step, [(kernel name, ms per step, calls per step)] by time, descending)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3 / steps
    kernels = []
    for e in prof.key_averages():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            t = getattr(e, "self_device_time_total", None)
            t = e.self_cuda_time_total if t is None else t
            if t > 0:
                kernels.append((e.key, t * 1e-3 / steps, e.count / steps))
    kernels.sort(key=lambda k: -k[1])
    return wall, sum(k[1] for k in kernels), round(sum(k[2] for k in kernels)), kernels


def cpu_top(fn, steps: int, top: int = 12) -> list[tuple[str, float, float]]:
    """[(op, self CPU ms per step, calls per step)] of ``fn`` under torch.profiler (CPU only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    ops = [(e.key, e.self_cpu_time_total * 1e-3 / steps, e.count / steps) for e in prof.key_averages()]
    return sorted(ops, key=lambda o: -o[1])[:top]


def ss_floor(ceil, L, d=4096, n=16) -> tuple[float, float, float]:
    """selective_scan forward floor in ms: (max, bytes term, exps term)."""
    byts = (4 * d * L + 2 * n * L) * 2  # u, Δ, z read, y written; B, C read (bf16)
    f_b, f_e = byts / ceil["copy_Bps"] * 1e3, L * d * n / ceil["exp2_per_s"] * 1e3
    return max(f_b, f_e), f_b, f_e


# (variant, chunk T, channels per program, warps) tried at L = 16k; the best runs the length sweep
# "cuda": the NVRTC-compiled CUDA C++ forward (its own config, selective_scan/cuda.py CONFIG; NOTES v10)
SS_VARIANTS = [("cuda", 0, 0, 0), ("time2", 128, 4, 1), ("time2", 128, 32, 8), ("scan", 32, 8, 4),
               ("scan", 16, 8, 4), ("seq", 16, 8, 4), ("seq", 16, 16, 4), ("seq", 16, 32, 4), ("seq", 16, 64, 4), ("seq", 16, 32, 8)]


def bench_selective_scan(ceil, lengths, rows) -> dict:
    d, n = 4096, 16
    say("## selective_scan forward variants, batch 1, d_inner 4096, state 16, L 16384, bf16")
    say("| variant | T | channels/program | warps | ms | ÷ floor | rel. error vs the default (cuda, else time2) |")
    say("|---|---|---|---|---|---|---|")
    L = 16384
    t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
    base = ss_triton.selective_scan_fwd(**t)[0]
    floor = ss_floor(ceil, L)[0]
    best, best_ms = None, float("inf")
    for var, T, bd, nw in SS_VARIANTS:
        kw = dict(variant=var, chunk=T, block_d=bd, num_warps=nw)
        try:
            err = rel(ss_triton.selective_scan_fwd(**t, **kw)[0], base)
            k = ms(lambda: ss_triton.selective_scan_fwd(**t, **kw), rep=100)
        except Exception as e:  # noqa: BLE001  (a config that does not compile is reported, not fatal)
            say(f"| {var} | {T} | {bd} | {nw} | failed: {type(e).__name__} | | |")
            continue
        say(f"| {var} | {T} | {bd} | {nw} | {fmt(k)} | {k / floor:.2f} | {err:.1e} |")
        rows.append(dict(op="selective_scan_variant", L=L, variant=var, T=T, BD=bd, warps=nw, kernel_ms=k, rel=err))
        if err < 2e-2 and k < best_ms:
            best, best_ms = kw, k
    say()
    del t, base
    say(f"## selective_scan forward, batch 1, d_inner 4096, state 16, bf16 (best variant: {best})")
    say("| L | default ms | best variant ms | reference ms | speed-up (best) | floor ms (bytes / exps) "
        "| best ÷ floor |")
    say("|---|---|---|---|---|---|---|")
    for L in lengths:
        t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
        k0 = ms(lambda: ss_triton.selective_scan_fwd(**t))
        k = ms(lambda: ss_triton.selective_scan_fwd(**t, **best)) if best else k0
        r = try_ms(lambda: selective_scan_ref(**t), rep=20) if L <= 65536 else None
        floor, f_b, f_e = ss_floor(ceil, L)
        say(f"| {L} | {fmt(k0)} | {fmt(k)} | {fmt(r)} | {fmt(r / k) if r else '–'} | {floor:.3f} "
            f"({f_b:.3f} / {f_e:.3f}) | {k / floor:.2f} |")
        rows.append(dict(op="selective_scan", L=L, kernel_ms=k0, best_ms=k, best=best, ref_ms=r, floor_ms=floor))
        del t
    say()
    return best or {}


# SSD forward configs tried at L = 64k: (state chunk, state N block, state warps, out P block, out warps);
# None: the default (evalkit/kernels/ssd/triton.py); (64, ...) is v3's structure (one stored state per
# chunk of 64). Run 7's sweep (kernels/NOTES.md, v4) had more; these are its best and neighbours.
SSD_CONFIGS = [None, (64, 32, 4, 64, 4), (256, 32, 4, 64, 4), (512, 32, 8, 64, 4), (512, 32, 4, 64, 4),
               (512, 64, 8, 64, 4)]


def bench_ssd_configs(ceil, rows) -> None:
    """SSD forward configs at L = 64k (bf16); the per-kernel split is in the profile section."""
    h, p, n, T, L = 16, 64, 128, 64, 65536
    say("## ssd forward configs, batch 1, 16 heads, headdim 64, state 128, chunk 64, L 65536, bf16")
    say("| state chunk | state BN | state warps | out BP | out warps | ms | rel. error |")
    say("|---|---|---|---|---|---|---|")
    t = ssd_inputs(1, L, h, p, n, torch.bfloat16, seed=L)
    base = None
    best, best_ms = None, float("inf")
    for cfg in SSD_CONFIGS:
        sc, bn, sw, bp, ow = cfg or ("default",) * 5
        kw = dict(state_chunk=sc, state_block_n=bn, state_warps=sw, out_block_p=bp, out_warps=ow) if cfg else {}
        try:
            y = ssd_triton.ssd_fwd(**t, chunk_size=T, **kw)[0]
            base = y if base is None else base
            err = rel(y, base)
            k = ms(lambda: ssd_triton.ssd_fwd(**t, chunk_size=T, **kw), rep=100)
        except Exception as e:  # noqa: BLE001  (a config that does not compile is reported, not fatal)
            say(f"| {sc} | {bn} | {sw} | {bp} | {ow} | failed: {type(e).__name__}: {str(e)[:80]} | |")
            continue
        say(f"| {sc} | {bn} | {sw} | {bp} | {ow} | {fmt(k)} | {err:.1e} |")
        rows.append(dict(op="ssd_config", L=L, state_chunk=sc, BN=bn, state_warps=sw, BP=bp, out_warps=ow,
                         kernel_ms=k, rel=err))
        if err < 2e-2 and k < best_ms:
            best, best_ms = cfg, k
    say(f"(best: {best or 'default'}; rel. error vs the first row)")
    say()


def bench_ssd(ceil, lengths, rows, fla):
    h, p, n, T = 16, 64, 128, 64
    say("## ssd forward, batch 1, 16 heads, headdim 64, state 128, chunk 64, bf16 (default config)")
    say("| L | kernel ms | fla chunk_simple_gla ms | reference ms | floor ms (bytes / flops) | kernel ÷ floor |")
    say("|---|---|---|---|---|---|")
    for L in lengths:
        t = ssd_inputs(1, L, h, p, n, torch.bfloat16, seed=L)
        k = ms(lambda: ssd_triton.ssd_fwd(**t, chunk_size=T))
        r = try_ms(lambda: ssd_ref(**t, chunk_size=T), rep=20)
        fl = None
        if fla is not None:
            q = t["C"].expand(1, L, h, n).contiguous()
            kk = t["B"].expand(1, L, h, n).contiguous()
            v = (t["x"] * t["dt"][..., None]).contiguous()
            g = (t["dt"].float() * t["A"]).contiguous()
            fl = try_ms(lambda: fla(q, kk, v, g=g, scale=1.0, output_final_state=True))
        byts = (2 * L * h * p + 2 * L * n + L * h) * 2  # x read, y written, B, C, dt (bf16)
        flops = h * (L * T * p + 4 * L * p * n) + L * T * n  # causal halves of the T×T products
        f_b, f_f = byts / ceil["copy_Bps"] * 1e3, flops / ceil["bf16_flops"] * 1e3
        floor = max(f_b, f_f)
        say(f"| {L} | {fmt(k)} | {fmt(fl)} | {fmt(r)} | {floor:.3f} ({f_b:.3f} / {f_f:.3f}) "
            f"| {k / floor:.2f} |")
        rows.append(dict(op="ssd", L=L, kernel_ms=k, fla_ms=fl, ref_ms=r, floor_ms=floor))
        del t
    say()


# backward configs tried at L = 16k: (forward/backward chunk T, channels per program, warps)
SS_BWD_CONFIGS = [(16, 8, 4), (16, 4, 4), (8, 8, 4), (16, 16, 8)]


def bench_backward(ceil, rows) -> None:
    """Triton backward vs the Triton forward (target: backward within 3x), and vs the reference."""
    d, n = 4096, 16
    say("## selective_scan backward configs, batch 1, d_inner 4096, state 16, L 16384, bf16")
    say("| T | channels/program | warps | fwd (storing states) ms | bwd ms | bwd ÷ fwd (plain) |")
    say("|---|---|---|---|---|---|")
    L = 16384
    t = ss_inputs(1, d, L, n, torch.bfloat16, seed=3)
    gy = torch.randn(1, d, L, device=DEV, dtype=torch.bfloat16)
    plain = ms(lambda: ss_triton.selective_scan_fwd(**t))
    best, best_ms = None, float("inf")
    for T, bd, nw in SS_BWD_CONFIGS:
        try:
            fw = ms(lambda: ss_triton.selective_scan_fwd(**t, chunk=T, store_states=True), rep=50)
            _, _, st = ss_triton.selective_scan_fwd(**t, chunk=T, store_states=True)
            args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], None, st, gy, None)
            bw = ms(lambda: ss_bwd.selective_scan_bwd(*args, chunk=T, block_d=bd, num_warps=nw), rep=50)
        except Exception as e:  # noqa: BLE001
            say(f"| {T} | {bd} | {nw} | failed: {type(e).__name__} | | |")
            continue
        say(f"| {T} | {bd} | {nw} | {fmt(fw)} | {fmt(bw)} | {bw / plain:.2f} |")
        rows.append(dict(op="selective_scan_bwd_config", L=L, T=T, BD=bd, warps=nw, fwd_ms=fw, bwd_ms=bw))
        if bw < best_ms:
            best, best_ms = (T, bd, nw), bw
    say()
    del t, gy
    torch.cuda.empty_cache()

    say("## forward + backward through the autograd Functions (Triton backward), bf16")
    say("| op | shape | fwd ms (no grad) | fwd+bwd ms | bwd ÷ fwd | reference fwd+bwd ms | speed-up |")
    say("|---|---|---|---|---|---|---|")
    for L in (4096, 16384):
        t = ss_inputs(1, d, L, n, torch.bfloat16, seed=1, grad=True)
        gy = torch.randn(1, d, L, device=DEV, dtype=torch.bfloat16)
        with torch.no_grad():
            fwd = ms(lambda: ss_triton.selective_scan(**t), rep=50)
        fb = ms(lambda: torch.autograd.grad(ss_triton.selective_scan(**t), list(t.values()), gy), rep=50)
        rb = try_ms(lambda: torch.autograd.grad(selective_scan_ref(**t), list(t.values()), gy), rep=20) \
            if L <= 4096 else None
        say(f"| selective_scan | B1-D4096-L{L}-N16 | {fmt(fwd)} | {fmt(fb)} | {(fb - fwd) / fwd:.2f} | "
            f"{fmt(rb)} | {fmt(rb / fb) if rb else '–'} |")
        rows.append(dict(op="selective_scan_fwd_bwd", L=L, fwd_ms=fwd, kernel_ms=fb, ref_ms=rb))
        del t, gy
        torch.cuda.empty_cache()
    for L in (4096, 16384, 65536):
        t = ssd_inputs(1, L, 16, 64, 128, torch.bfloat16, seed=2, grad=True)
        gy = torch.randn(1, L, 16, 64, device=DEV, dtype=torch.bfloat16)
        with torch.no_grad():
            fwd = ms(lambda: ssd_triton.ssd(**t, chunk_size=64), rep=50)
        fb = ms(lambda: torch.autograd.grad(ssd_triton.ssd(**t, chunk_size=64), list(t.values()), gy), rep=50)
        rb = try_ms(lambda: torch.autograd.grad(ssd_ref(**t, chunk_size=64), list(t.values()), gy), rep=20)
        say(f"| ssd | B1-L{L}-H16-P64-N128 | {fmt(fwd)} | {fmt(fb)} | {(fb - fwd) / fwd:.2f} | {fmt(rb)} "
            f"| {fmt(rb / fb) if rb else '–'} |")
        rows.append(dict(op="ssd_fwd_bwd", L=L, fwd_ms=fwd, kernel_ms=fb, ref_ms=rb))
        del t, gy
        torch.cuda.empty_cache()
    say(f"(best selective_scan backward config: T, channels, warps = {best})")
    say()


def bench_decode(ceil, rows) -> None:
    """One decode step at a 1.3B-class layer's width (batch 1 and 16): kernel vs reference step."""
    say("## decode step (one token, state in/out), bf16 inputs, fp32 state")
    say("| op | shape | kernel µs | reference µs | state bytes floor µs |")
    say("|---|---|---|---|---|")
    for b in (1, 16):
        d, n = 4096, 16
        g = torch.Generator(device=DEV).manual_seed(b)
        r = lambda *s: torch.randn(*s, generator=g, device=DEV)  # noqa: E731
        st = r(b, d, n)
        kw = dict(u=r(b, d).bfloat16(), delta=r(b, d).bfloat16(), A=-r(d, n).abs(), B=r(b, n).bfloat16(),
                  C=r(b, n).bfloat16(), D=r(d), z=r(b, d).bfloat16(), delta_bias=r(d))
        k = ms(lambda: ss_step.selective_scan_step(st, **kw)) * 1e3
        rr = ms(lambda: selective_scan_step_ref(st, **kw)) * 1e3
        fl = 2 * st.numel() * 4 / ceil["copy_Bps"] * 1e6
        say(f"| selective_scan | B{b}-D{d}-N{n} | {k:.1f} | {rr:.1f} | {fl:.2f} |")
        rows.append(dict(op="selective_scan_step", batch=b, kernel_us=k, ref_us=rr, floor_us=fl))
        h, p, n = 64, 64, 128
        st = r(b, h, p, n)
        kw = dict(x=r(b, h, p).bfloat16(), dt=r(b, h).bfloat16(), A=-r(h).abs(), B=r(b, 1, n).bfloat16(),
                  C=r(b, 1, n).bfloat16(), D=r(h), z=r(b, h, p).bfloat16(), dt_bias=r(h), dt_softplus=True)
        k = ms(lambda: ssd_step.ssd_step(st, **kw)) * 1e3
        rr = ms(lambda: ssd_step_ref(st, **kw)) * 1e3
        fl = 2 * st.numel() * 4 / ceil["copy_Bps"] * 1e6
        say(f"| ssd | B{b}-H{h}-P{p}-N{n} | {k:.1f} | {rr:.1f} | {fl:.2f} |")
        rows.append(dict(op="ssd_step", batch=b, kernel_us=k, ref_us=rr, floor_us=fl))
    say()


def bench_crossover(rows, lengths) -> None:
    """Prefill of one mixer layer at d_model 2048 (bf16, batch 1, random weights): attention
    (SDPA, 16 heads x 128) vs Mamba (d_inner 4096, N 16) vs Mamba-2 (64 heads x 64, N 128)."""
    from evalkit.models.native import MIXERS, NativeConfig

    base = dict(vocab_size=512, d_model=2048, n_layers=1, n_heads=16, d_state=16, headdim=64,
                chunk_size=64, max_context=1 << 21)
    layers = {}
    for name, extra in (("attention", {}), ("mamba", {}), ("mamba2", {"d_state": 128})):
        cfg = NativeConfig.from_dict({**base, **extra})
        m = MIXERS.get(name)(cfg, layer_idx=0)
        m.reset_parameters(torch.Generator().manual_seed(0))
        layers[name] = m.to(DEV, torch.bfloat16).eval()
    say("## prefill crossover: one layer at d_model 2048, batch 1, bf16 (ms)")
    say("| L | attention (SDPA) | mamba (kernels) | mamba2 (kernels) |")
    say("|---|---|---|---|")
    for L in lengths:
        x = torch.randn(1, L, 2048, device=DEV, dtype=torch.bfloat16)
        with torch.no_grad():
            t = {k: try_ms(lambda m=m: m(x), rep=50) for k, m in layers.items()}
        say(f"| {L} | {fmt(t['attention'])} | {fmt(t['mamba'])} | {fmt(t['mamba2'])} |")
        rows.append(dict(op="crossover", L=L, **{f"{k}_ms": v for k, v in t.items()}))
        del x
    say()


def _train_step(name: str, mode_: str):
    """A training step of zoo model ``name`` (models/<name>.yaml, fresh weights) with
    EVALKIT_KERNELS=``mode_``: the trainer's own loss and bf16 autocast (evalkit.train._loss /
    _autocast), fused AdamW, random tokens, batch 8 x 1024. Returns (step, tokens per step)."""
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.spec import load_model_spec
    from evalkit.train import _autocast, _loss

    os.environ["EVALKIT_KERNELS"] = mode_
    spec = load_model_spec(f"models/{name}.yaml")
    torch.manual_seed(0)
    model = NativeLM(NativeAdapter.config(spec), seed=0).to(DEV).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ids = torch.randint(0, model.cfg.vocab_size, (8, 1024), device=DEV)
    tgt = torch.full_like(ids, -100)
    tgt[:, -8:] = ids[:, -8:]

    def step():
        with _autocast("cuda"):
            loss = _loss(model, ids, tgt, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, ids.numel()


def bench_train(rows, seconds: float = 5.0) -> None:
    """Training tokens/s of zoo models, kernels (EVALKIT_KERNELS=auto) vs references (=ref)."""
    import time

    say("## training tokens/s (fwd + bwd + AdamW), batch 8 x 1024 tokens, bf16 autocast")
    say("| model | kernels tok/s | references tok/s | speed-up |")
    say("|---|---|---|---|")
    for name in ("mamba", "mamba2", "hybrid"):
        tps = {}
        for mode_ in ("auto", "ref"):
            step, ntok = _train_step(name, mode_)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 2 or n < 3:
                step()
                n += 1
            torch.cuda.synchronize()
            tps[mode_] = n * ntok / (time.perf_counter() - t0)
            del step
        os.environ.pop("EVALKIT_KERNELS", None)
        say(f"| {name} | {tps['auto']:.0f} | {tps['ref']:.0f} | {tps['auto'] / tps['ref']:.2f} |")
        rows.append(dict(op="train", model=name, kernel_tps=tps["auto"], ref_tps=tps["ref"]))
    say()


def bench_train_graph(rows, reps: int = 30) -> None:
    """What launch overhead costs: one training step captured as a CUDA graph (the same model,
    bf16 autocast without its weight cache, fused capturable AdamW, CE on the last 8 positions,
    i.e. the trainer's loss with a fixed answer mask, which needs no host sync) vs the same step
    run eagerly; kernels and references. Not what evalkit's trainer does: a measurement of
    what it could gain."""
    import time

    import torch.nn.functional as F

    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.spec import load_model_spec

    say("## training step eager vs CUDA graph (tokens/s), batch 8 x 1024, bf16 autocast")
    say("| model | kernels eager | kernels graph | references eager | references graph | graph+kernels ÷ ref eager |")
    say("|---|---|---|---|---|---|")
    for name in ("mamba2", "hybrid", "mamba"):
        res = {}
        for mode_ in ("auto", "ref"):
            os.environ["EVALKIT_KERNELS"] = mode_
            torch.manual_seed(0)
            model = NativeLM(NativeAdapter.config(load_model_spec(f"models/{name}.yaml")), seed=0).to(DEV).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True, capturable=True)
            ids = torch.randint(0, model.cfg.vocab_size, (8, 1024), device=DEV)

            def fwd_bwd():
                with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                    h = model.hidden(ids)[:, -8:].reshape(-1, model.cfg.d_model)
                    loss = F.cross_entropy(model.head(h).float(), ids[:, -8:].reshape(-1))
                loss.backward()
                opt.step()

            def eager():
                opt.zero_grad(set_to_none=True)
                fwd_bwd()

            def timed(fn):
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                torch.cuda.synchronize()
                return reps * ids.numel() / (time.perf_counter() - t0)

            res[mode_ + " eager"] = timed(eager)
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        eager()
                torch.cuda.current_stream().wait_stream(s)
                opt.zero_grad(set_to_none=True)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fwd_bwd()
                res[mode_ + " graph"] = timed(g.replay)
                del g
            except Exception as e:  # noqa: BLE001  (a step that cannot be captured is reported, not fatal)
                say(f"(capture failed for {name} {mode_}: {type(e).__name__}: {str(e)[:100]})")
                res[mode_ + " graph"] = None
            del model, opt
        os.environ.pop("EVALKIT_KERNELS", None)
        kg, rg, re_ = res["auto graph"], res["ref graph"], res["ref eager"]
        say(f"| {name} | {res['auto eager']:.0f} | {'–' if kg is None else f'{kg:.0f}'} | {re_:.0f} "
            f"| {'–' if rg is None else f'{rg:.0f}'} | {'–' if kg is None else f'{kg / re_:.2f}'} |")
        rows.append(dict(op="train_graph", model=name, **{k.replace(" ", "_") + "_tps": v for k, v in res.items()}))
    say()


def bench_train_profile(rows, steps: int = 5) -> None:
    """Where a training step's time goes (torch.profiler): wall time vs the sum of GPU kernel
    times (a step whose kernels add up to much less than its wall time is bound by the CPU:
    Python and launches), and the top GPU kernels."""
    say("## ssd forward at L 65536 (bf16, 16 heads x 64, N 128): time per kernel (torch.profiler)")
    say("| config | state kernel ms | out kernel ms |")
    say("|---|---|---|")
    t = ssd_inputs(1, 65536, 16, 64, 128, torch.bfloat16, seed=7)
    for label, kw in (("default", {}), ("v3 (state chunk 64)", dict(state_chunk=64, state_warps=4))):
        ssd_triton.ssd_fwd(**t, chunk_size=64, **kw)
        _, _, _, ks = gpu_profile(lambda kw=kw: ssd_triton.ssd_fwd(**t, chunk_size=64, **kw), 10)
        st = sum(x[1] for x in ks if "state" in x[0])
        ot = sum(x[1] for x in ks if "out" in x[0])
        say(f"| {label} | {st:.3f} | {ot:.3f} |")
        rows.append(dict(op="ssd_split", config=label, state_ms=st, out_ms=ot))
    del t
    say()
    say("## training step profile (torch.profiler), batch 8 x 1024, bf16 autocast")
    for name, mode_ in (("mamba2", "auto"), ("mamba2", "ref"), ("hybrid", "auto")):
        step, _ = _train_step(name, mode_)
        for _ in range(3):
            step()
        wall, gpu, launches, ks = gpu_profile(step, steps)
        cpu = cpu_top(step, steps)
        os.environ.pop("EVALKIT_KERNELS", None)
        say(f"### {name}, EVALKIT_KERNELS={mode_}: wall {wall:.2f} ms/step (with profiler), GPU kernels "
            f"{gpu:.2f} ms/step, {launches} launches/step")
        say("| kernel | ms/step | % of GPU | calls/step |")
        say("|---|---|---|---|")
        for k, t, c in ks[:12]:
            say(f"| {k[:90].replace('|', '/')} | {t:.3f} | {100 * t / gpu:.1f} | {c:.0f} |")
        say("| CPU op (self time) | ms/step | calls/step |")
        say("|---|---|---|")
        for k, t, c in cpu:
            say(f"| {k[:90].replace('|', '/')} | {t:.3f} | {c:.0f} |")
        rows.append(dict(op="train_profile", model=name, mode=mode_, wall_ms=wall, gpu_ms=gpu, launches=launches,
                         top=[list(k) for k in ks[:25]], cpu_top=[list(k) for k in cpu]))
        del step
        say()


def report_asm(out: str) -> None:
    """Registers and spills of every compiled variant of the kernels (the compiler's resource
    report), and the TTGIR of the selective-scan forward / backward (where the layouts show)."""
    from evalkit.kernels.ssd import triton_bwd as ssd_bwd

    say("## compiled kernels: registers / spills per variant (from this run's compile cache)")
    say("| kernel | variants | regs (min–max) | spills (max) |")
    say("|---|---|---|---|")
    fns = {"ss fwd scan": ss_triton._selective_scan_kernel, "ss fwd seq": ss_triton._selective_scan_seq_kernel,
           "ss bwd": ss_bwd._selective_scan_bwd_kernel, "ssd state": ssd_triton._ssd_state_kernel,
           "ssd out": ssd_triton._ssd_out_kernel, "ssd bwd dstate": ssd_bwd._ssd_bwd_dstate_kernel,
           "ssd bwd chunk": ssd_bwd._ssd_bwd_chunk_kernel}
    for name, fn in fns.items():
        try:
            ks = [k for c in fn.device_caches.values() for k in c[0].values()]
            regs = [k.n_regs for k in ks]
            spills = [k.n_spills for k in ks]
            say(f"| {name} | {len(ks)} | {min(regs)}–{max(regs)} | {max(spills)} |" if ks else f"| {name} | 0 | | |")
            if name in ("ss fwd scan", "ss bwd") and ks:
                with open(os.path.join(out, name.replace(" ", "_") + ".ttgir"), "w") as fh:
                    for k in ks:
                        fh.write(f"// n_regs {k.n_regs} n_spills {k.n_spills}\n{k.asm.get('ttgir', '')[:400000]}\n")
        except Exception as e:  # noqa: BLE001  (the compile cache layout differs between Triton versions)
            say(f"| {name} | ? ({type(e).__name__}: {str(e)[:60]}) | | |")
    say()


def model_check() -> bool:
    """Native models from models/*.yaml on CUDA: kernels (the default) vs the reference."""
    from evalkit.kernels import dispatch
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.spec import load_model_spec

    ok = True
    say("## native models on CUDA: logits with kernels (default) vs EVALKIT_KERNELS=ref")
    say("| model | dtype | L | kernel calls | max abs diff | max abs logit |")
    say("|---|---|---|---|---|---|")
    for name in ("models/hybrid.yaml", "models/mamba.yaml"):
        spec = load_model_spec(name)
        model = NativeLM(NativeAdapter.config(spec), seed=spec.init_seed or 0).to(DEV).eval()
        for dtype in (torch.float32, torch.bfloat16):
            model = model.to(dtype)
            ids = torch.randint(0, model.cfg.vocab_size, (2, 1000), device=DEV)
            os.environ.pop("EVALKIT_KERNELS", None)
            before = dispatch.kernel_calls()
            with torch.no_grad():
                lk = model(ids).float()
            calls = dispatch.kernel_calls() - before
            os.environ["EVALKIT_KERNELS"] = "ref"
            with torch.no_grad():
                lr = model(ids).float()
            os.environ.pop("EVALKIT_KERNELS", None)
            diff = (lk - lr).abs().max().item()
            good = calls > 0 and diff < (1e-3 if dtype == torch.float32 else 0.1) * max(1.0, lr.abs().max().item())
            ok &= good
            say(f"| {spec.name} | {str(dtype)[6:]} | 1000 | {calls} | {diff:.2e} | "
                f"{lr.abs().max().item():.2f} |{'' if good else ' FAIL'}")
    say()
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter lengths only")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all), in that order")
    a = ap.parse_args()
    say(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
    try:
        from fla.ops.simple_gla import chunk_simple_gla as fla
        import fla as _fla
        say(f"flash-linear-attention {getattr(_fla, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        fla = None
        say(f"flash-linear-attention not available ({type(e).__name__}: {e})")
    rows: list[dict] = []
    ceil: dict = {}

    def save(ok: bool) -> None:  # after every section, so a run cut short keeps what it measured
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench.md"), "w") as fh:
            fh.write("\n".join(LINES) + "\n")
        with open(os.path.join(a.out, "bench.json"), "w") as fh:
            json.dump({"ceilings": ceil, "rows": rows, "checks_ok": ok}, fh, indent=1)

    ok = True if a.skip_checks else check_all()
    ok &= model_check()
    save(ok)
    ceil.update(ceilings())
    say(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s (read + write), bf16 matmul "
        f"{ceil['bf16_flops'] / 1e12:.0f} TFLOP/s, exp2 {ceil['exp2_per_s'] / 1e12:.2f} T/s")
    say()
    lengths = [4096, 16384] if a.quick else [4096, 16384, 65536]
    sections = {
        "ssd_configs": lambda: bench_ssd_configs(ceil, rows),
        "ssd": lambda: bench_ssd(ceil, lengths, rows, fla),
        "selective_scan": lambda: bench_selective_scan(ceil, lengths, rows),
        "backward": lambda: bench_backward(ceil, rows),
        "decode": lambda: bench_decode(ceil, rows),
        "crossover": lambda: bench_crossover(rows, [512, 1024, 2048, 4096, 8192, 16384, 32768]),
        "train": lambda: bench_train(rows),
        "train_graph": lambda: bench_train_graph(rows),
        # last: after torch.profiler has run, CPU-bound timings in the same process came out ~2x
        # slower (run 7: reference fwd+bwd 1622 vs 896 ms) — so the profile goes after the timings
        "profile": lambda: bench_train_profile(rows),
        "asm": lambda: report_asm(a.out),
    }
    only = a.only.split(",") if a.only else list(sections)
    unknown = set(only) - set(sections)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; known: {', '.join(sections)}")
    sections = [sections[k] for k in only]
    import time

    for name, fn in zip(only, sections):
        print(f"[{time.strftime('%H:%M:%S')}] section {name}", file=sys.stderr, flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (one failing section must not lose the others)
            import traceback

            say(f"SECTION FAILED: {type(e).__name__}: {e}")
            traceback.print_exc()
            ok = False
        torch.cuda.empty_cache()
        save(ok)
    say("checks: " + ("all passed" if ok else "SOME FAILED"))
    save(ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
