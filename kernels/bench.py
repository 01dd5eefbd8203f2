"""Kernel benchmark: check, measure the ceilings, time. One run on a GPU does all three.

    PYTHONPATH=. python kernels/bench.py [--quick] [--out DIR]

1. checks every Triton kernel against its PyTorch reference on this GPU (forward and backward,
   bf16 and fp32, fresh random inputs, odd lengths): the Hopper backward-miscompile warning in
   GPU-NOTES.md is why this runs on the device itself;
2. measures the ceilings: device-to-device copy bandwidth, bf16 matmul rate, exp2 rate;
3. times each kernel vs length at the issue's shapes against the reference and the roofline floor
   (max of bytes ÷ bandwidth, FLOPs ÷ matmul rate, exps ÷ exp2 rate) and, where installed,
   flash-linear-attention's chunk_simple_gla; then a native-model forward, kernels vs reference.

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

from evalkit.kernels.selective_scan import selective_scan_ref
from evalkit.kernels.selective_scan import triton as ss_triton
from evalkit.kernels.ssd import ssd_ref
from evalkit.kernels.ssd import triton as ssd_triton

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


def check_all() -> bool:
    ok = True
    say("## checks on this GPU (rel = ‖kernel − reference‖ / ‖reference‖, reference in fp32)")
    say("| op | shape | dtype | y | final state | grads (worst) | pass |")
    say("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for (b, d, L, n) in [(2, 96, 1000, 16), (1, 300, 4099, 16), (2, 64, 63, 8)]:
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
            good = ey < TOL[dtype] and eh < TOL[dtype] and eg < 5 * TOL[dtype]
            ok &= good
            say(f"| selective_scan | B{b}-D{d}-L{L}-N{n} | {str(dtype)[6:]} | {ey:.1e} | {eh:.1e} "
                f"| {eg:.1e} | {'ok' if good else 'FAIL'} |")
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
            good = ey < TOL[dtype] and eh < TOL[dtype] and eg < 5 * TOL[dtype]
            ok &= good
            say(f"| ssd | B{b}-L{L}-H{h}-P{p}-N{n}-T{T} | {str(dtype)[6:]} | {ey:.1e} | {eh:.1e} "
                f"| {eg:.1e} | {'ok' if good else 'FAIL'} |")
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


def bench_selective_scan(ceil, lengths, rows):
    d, n = 4096, 16
    say("## selective_scan forward, batch 1, d_inner 4096, state 16, bf16")
    say("| L | kernel ms | reference ms | speed-up | floor ms (bytes / exps) | kernel ÷ floor |")
    say("|---|---|---|---|---|---|")
    for L in lengths:
        t = ss_inputs(1, d, L, n, torch.bfloat16, seed=L)
        k = ms(lambda: ss_triton.selective_scan_fwd(**t))
        r = try_ms(lambda: selective_scan_ref(**t), rep=20)
        byts = (4 * d * L + 2 * n * L) * 2  # u, Δ, z read, y written; B, C read (bf16)
        f_b, f_e = byts / ceil["copy_Bps"] * 1e3, L * d * n / ceil["exp2_per_s"] * 1e3
        floor = max(f_b, f_e)
        say(f"| {L} | {fmt(k)} | {fmt(r)} | {fmt(r / k) if r else '–'} | {floor:.3f} "
            f"({f_b:.3f} / {f_e:.3f}) | {k / floor:.2f} |")
        rows.append(dict(op="selective_scan", L=L, kernel_ms=k, ref_ms=r, floor_ms=floor))
        del t
    say()


def bench_ssd(ceil, lengths, rows, fla):
    h, p, n, T = 16, 64, 128, 64
    say("## ssd forward, batch 1, 16 heads, headdim 64, state 128, chunk 64, bf16")
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


def bench_backward(rows):
    """Forward + backward through the autograd Functions (backward = reference recompute)."""
    say("## forward + backward (backward recomputes through the PyTorch reference), bf16")
    say("| op | shape | kernel fwd ms | fwd+bwd ms | reference fwd+bwd ms |")
    say("|---|---|---|---|---|")
    L = 4096
    t = ss_inputs(1, 4096, L, 16, torch.bfloat16, seed=1, grad=True)
    gy = torch.randn(1, 4096, L, device=DEV, dtype=torch.bfloat16)
    fwd = ms(lambda: ss_triton.selective_scan(**t), rep=50)
    fb = try_ms(lambda: torch.autograd.grad(ss_triton.selective_scan(**t), list(t.values()), gy), rep=20)
    rb = try_ms(lambda: torch.autograd.grad(selective_scan_ref(**t), list(t.values()), gy), rep=20)
    say(f"| selective_scan | B1-D4096-L{L}-N16 | {fmt(fwd)} | {fmt(fb)} | {fmt(rb)} |")
    rows.append(dict(op="selective_scan_fwd_bwd", L=L, kernel_ms=fb, ref_ms=rb))
    del t, gy
    torch.cuda.empty_cache()
    t = ssd_inputs(1, L, 16, 64, 128, torch.bfloat16, seed=2, grad=True)
    gy = torch.randn(1, L, 16, 64, device=DEV, dtype=torch.bfloat16)
    fwd = ms(lambda: ssd_triton.ssd(**t, chunk_size=64), rep=50)
    fb = try_ms(lambda: torch.autograd.grad(ssd_triton.ssd(**t, chunk_size=64), list(t.values()), gy), rep=20)
    rb = try_ms(lambda: torch.autograd.grad(ssd_ref(**t, chunk_size=64), list(t.values()), gy), rep=20)
    say(f"| ssd | B1-L{L}-H16-P64-N128 | {fmt(fwd)} | {fmt(fb)} | {fmt(rb)} |")
    rows.append(dict(op="ssd_fwd_bwd", L=L, kernel_ms=fb, ref_ms=rb))
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
    a = ap.parse_args()
    say(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
    try:
        from fla.ops.simple_gla import chunk_simple_gla as fla
        import fla as _fla
        say(f"flash-linear-attention {getattr(_fla, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        fla = None
        say(f"flash-linear-attention not available ({type(e).__name__}: {e})")
    ok = True if a.skip_checks else check_all()
    ok &= model_check()
    ceil = ceilings()
    say(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s (read + write), bf16 matmul "
        f"{ceil['bf16_flops'] / 1e12:.0f} TFLOP/s, exp2 {ceil['exp2_per_s'] / 1e12:.2f} T/s")
    say()
    rows: list[dict] = []
    bench_selective_scan(ceil, [4096, 16384] if a.quick else [4096, 16384, 65536], rows)
    bench_ssd(ceil, [4096, 16384] if a.quick else [4096, 16384, 65536], rows, fla)
    bench_backward(rows)
    say("checks: " + ("all passed" if ok else "SOME FAILED"))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench.md"), "w") as fh:
        fh.write("\n".join(LINES) + "\n")
    with open(os.path.join(a.out, "bench.json"), "w") as fh:
        json.dump({"ceilings": ceil, "rows": rows, "checks_ok": ok}, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
