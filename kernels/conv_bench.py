"""The causal depthwise conv1d + SiLU kernels (``evalkit/kernels/conv1d/triton.py``, kernels/NOTES.md v13) on the
GPU, in one run: checks against the reference (fp64) at the shapes the mixers pass, then forward and
forward + backward times against the reference path (``F.conv1d`` + SiLU under bf16 autocast, as the models ran
before) and the
byte floor (x read and y written; the backward reads x and the output gradient, writes the input gradient,
and writes and reads its fp32 pre-activation gradient once: that last part is not counted, it is the price
of the simpler two-pass backward).

    PYTHONPATH=. python kernels/conv_bench.py [--sweep | --big L]

``--sweep``: only the tile sweep (per layout: channels × steps per tile, and the backward's target program count),
GPU time per call from the profiler.

``--big L``: only the 64-bit (``BIG``) variant's check: 1 × 4096 × L in both layouts (L = 600000 is 1.14 × 2³¹
elements), forward and every gradient against the fp32 reference run on 256 channels at a time.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from evalkit.kernels.conv1d import causal_conv1d_ref
from evalkit.kernels.conv1d import triton as conv_triton
from kernels.bench import ceilings, fmt, gpu_profile, ms, rel

# (name, batch, channels, length, channels-last): the zoo's training shapes (d_model 64: Mamba's d_inner 128
# channel-major, Mamba-2's x/B/C 160 channels-last) and the d_model-2048 prefill pieces (Mamba 4096 channels,
# Mamba-2 4096 + 2·128)
SHAPES = [("zoo mamba", 16, 128, 1024, False), ("zoo mamba2", 16, 160, 1024, True),
          ("d2048 mamba 64k", 1, 4096, 65536, False), ("d2048 mamba2 64k", 1, 4352, 65536, True)]


def inputs(Bn, C, L, last, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(Bn, L, C, device="cuda", generator=g, dtype=dtype).transpose(1, 2) if last
         else torch.randn(Bn, C, L, device="cuda", generator=g, dtype=dtype))
    w = torch.randn(C, 4, device="cuda", generator=g) * 0.5
    b = torch.randn(C, device="cuda", generator=g)
    return x, w, b


def ref_autocast(x, w, b):
    """The reference path as the models ran it: F.conv1d + SiLU under bf16 autocast (weights cast to bf16)."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return causal_conv1d_ref(x, w, b, None, "silu")


def in_gy_layout(x, w, b, gy):
    """The backward with ``BWD_LAYOUT = "gy"``: no copy of the output gradient; x read across the tiles."""
    conv_triton.BWD_LAYOUT = "gy"
    try:
        return conv_triton.conv_bwd(x, w, b, None, gy, True, False)
    finally:
        conv_triton.BWD_LAYOUT = "x"


def sweep() -> None:
    print("## tile sweep: GPU µs per call (profiler, 20 calls), bf16, SiLU, width 4; backward with gy in x's layout")
    print("| shape | tile (channels × steps) | target programs | forward | backward | gs pass | gx pass | reduce |")
    print("|---|---|---|---|---|---|---|---|")
    tiles0, target0 = dict(conv_triton.TILES), conv_triton.TARGET_PROGRAMS
    for name, Bn, C, L, last in SHAPES:
        x, w, b = inputs(Bn, C, L, last)
        gy = conv_triton._like(x).copy_(torch.randn(Bn, C, L, device="cuda", dtype=x.dtype))
        for tile in ((128, 16), (64, 32), (32, 64), (32, 32), (16, 128), (16, 64)):
            for target in (256, 1024):
                conv_triton.TILES[last], conv_triton.TARGET_PROGRAMS = tile, target
                conv_triton.conv_fwd(x, w, b, None, True)
                conv_triton.conv_bwd(x, w, b, None, gy, True, False)
                _, f, _, _ = gpu_profile(lambda: conv_triton.conv_fwd(x, w, b, None, True), 20)
                _, g, _, ks = gpu_profile(lambda: conv_triton.conv_bwd(x, w, b, None, gy, True, False), 20)
                by = {k: t for k, t, _ in ks}
                part = [sum(t for k, t in by.items() if key in k) * 1e3 for key in ("gs_kernel", "gx_kernel", "reduce")]
                print(f"| {name} | {tile[0]} × {tile[1]} | {target} | {f * 1e3:.1f} | {g * 1e3:.1f} | "
                      + " | ".join(f"{v:.1f}" for v in part) + " |")
        conv_triton.TILES.update(tiles0)
        conv_triton.TARGET_PROGRAMS = target0


def big(L: int, C: int = 4096, chunk: int = 256) -> bool:
    """The kernels past 2³¹ elements (64-bit offsets) against the reference, per chunk of channels."""
    from evalkit.kernels import dispatch
    print(f"## 64-bit check: 1 × {C} × {L} = {C * L / 2**31:.2f} × 2³¹ elements, bf16, SiLU, with an initial state")
    print("| layout | BIG | fwd ms | bwd ms | y rel | gx rel | gw rel | gbias rel | gh0 rel |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for last in (False, True):
        x, w, b = inputs(1, C, L, last)
        h0 = torch.randn(1, C, 3, device="cuda", dtype=x.dtype)
        gy = conv_triton._like(x)
        gy.copy_(torch.randn(1, L, C, device="cuda", dtype=x.dtype).transpose(1, 2) if last
                 else torch.randn(1, C, L, device="cuda", dtype=x.dtype))
        flag = dispatch.needs_int64(x, gy, h0)
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        conv_triton.conv_bwd(x, w, b, h0, conv_triton.conv_fwd(x, w, b, h0, True), True, True)  # compile first
        sync()
        t0 = time.perf_counter()
        y = conv_triton.conv_fwd(x, w, b, h0, True)
        sync()
        t1 = time.perf_counter()
        gx, gw, gb, gh0 = conv_triton.conv_bwd(x, w, b, h0, gy, True, True)
        sync()
        t2 = time.perf_counter()
        worst = [0.0] * 5
        for c0 in range(0, C, chunk):
            sl = slice(c0, c0 + chunk)
            ref = [t[sl].detach().float().requires_grad_(True) for t in (w, b)]
            xs = x[:, sl].float().requires_grad_(True)
            hs = h0[:, sl].float().requires_grad_(True)
            yr = causal_conv1d_ref(xs, ref[0], ref[1], hs, "silu")
            gr = torch.autograd.grad(yr, (xs, ref[0], ref[1], hs), gy[:, sl].float())
            got = (y[:, sl], gx[:, sl], gw[sl], gb[sl], gh0[:, sl])
            for i, (a, r) in enumerate(zip(got, (yr,) + gr)):
                e = rel(a, r)
                worst[i] = e if math.isnan(e) or e > worst[i] else worst[i]  # a NaN stays
            del yr, gr, xs
        good = worst[0] < 1e-2 and all(e < 2e-2 for e in worst[1:]) and flag
        ok &= good
        print(f"| {'channels-last' if last else 'channel-major'} | {flag} | {(t1 - t0) * 1e3:.2f} | "
              f"{(t2 - t1) * 1e3:.2f} | " + " | ".join(f"{e:.1e}" for e in worst) + f"{'' if good else ' FAIL'} |")
        del x, gy, y, gx
        torch.cuda.empty_cache()
    print("\nbig checks: " + ("all passed" if ok else "FAILED"))
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--big", type=int, default=0, metavar="L")
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    if a.sweep:
        sweep()
        return
    if a.big:
        raise SystemExit(0 if big(a.big) else 1)
    ceil = ceilings()
    bw = ceil["copy_Bps"]
    print(f"ceilings: copy {bw / 1e12:.2f} TB/s")
    print("\n## checks: kernel vs the reference in fp64 (bf16 inputs, SiLU, with an initial state)")
    print("| shape | y rel | gx rel | gw rel | gbias rel | gh0 rel |")
    print("|---|---|---|---|---|---|")
    ok = True
    for name, Bn, C, L, last in SHAPES[:2] + [("odd", 3, 77, 1001, True), ("odd cm", 2, 45, 333, False)]:
        x, w, b = inputs(Bn, C, L, last)
        h0 = torch.randn(Bn, C, 3, device="cuda", dtype=x.dtype)
        gy = torch.randn(Bn, C, L, device="cuda", dtype=x.dtype)
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b, h0)]
        y = conv_triton.causal_conv1d(*leaves, True)
        g = torch.autograd.grad(y, leaves, gy)
        ref = [t.detach().double().requires_grad_(True) for t in (x, w, b, h0)]
        yr = causal_conv1d_ref(*ref, "silu")
        gr = torch.autograd.grad(yr, ref, gy.double())
        errs = [rel(y, yr)] + [rel(a, r) for a, r in zip(g, gr)]
        good = errs[0] < 1e-2 and max(errs[1:]) < 2e-2
        ok &= good
        print(f"| {name} {Bn}×{C}×{L}{' (B, L, C)' if last else ''} | " + " | ".join(f"{e:.1e}" for e in errs)
              + f"{'' if good else ' FAIL'} |")
    print("\n## times (bf16, SiLU, width 4, no initial state): kernel vs reference (F.conv1d + SiLU, autograd)")
    print("| shape | fwd kernel ms | fwd ref ms | fwd floor ms | fwd ÷ floor | fwd+bwd kernel ms | fwd+bwd ref ms "
          "| speed-up fwd / fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for name, Bn, C, L, last in SHAPES:
        x, w, b = inputs(Bn, C, L, last)
        gy = torch.randn(Bn, C, L, device="cuda", dtype=x.dtype)
        xl, wl, bl = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        kf = ms(lambda: conv_triton.causal_conv1d(x, w, b, None, True), rep=100)
        rf = ms(lambda: ref_autocast(x, w, b), rep=100)
        kb = ms(lambda: torch.autograd.grad(conv_triton.causal_conv1d(xl, wl, bl, None, True), (xl, wl, bl), gy),
                rep=100)
        rb = ms(lambda: torch.autograd.grad(ref_autocast(xl, wl, bl), (xl, wl, bl), gy), rep=100)
        floor = 2 * x.numel() * x.element_size() / bw * 1e3
        print(f"| {name} {Bn}×{C}×{L}{' (B, L, C)' if last else ''} | {fmt(kf)} | {fmt(rf)} | {fmt(floor)} | "
              f"{kf / floor:.1f} | {fmt(kb)} | {fmt(rb)} | {rf / kf:.1f}× / {rb / kb:.1f}× |")
    print("\n## GPU time per call by kernel (torch.profiler, 20 calls; the zoo shapes are launch-bound in the table "
          "above): forward, and the backward with the output gradient in x's layout and in the other one")
    print("| shape | pass | GPU µs per call | kernels (µs per call) |")
    print("|---|---|---|---|")
    for name, Bn, C, L, last in SHAPES:
        x, w, b = inputs(Bn, C, L, last)
        same = conv_triton._like(x).copy_(torch.randn(Bn, C, L, device="cuda", dtype=x.dtype))
        other = (torch.randn(Bn, C, L, device="cuda", dtype=x.dtype) if last
                 else torch.randn(Bn, L, C, device="cuda", dtype=x.dtype).transpose(1, 2))
        runs = [("forward", lambda: conv_triton.conv_fwd(x, w, b, None, True)),
                ("backward, gy same layout", lambda: conv_triton.conv_bwd(x, w, b, None, same, True, False)),
                ("backward, gy other layout", lambda: conv_triton.conv_bwd(x, w, b, None, other, True, False)),
                ("backward, gy other layout, worked in gy's", lambda: in_gy_layout(x, w, b, other))]
        for what, fn in runs:
            fn()
            _, gpu, _, ks = gpu_profile(fn, 20)
            desc = ", ".join(f"{k[:28]} {t * 1e3:.1f}" for k, t, _ in ks[:4])
            print(f"| {name} | {what} | {gpu * 1e3:.1f} | {desc} |")
    print("\nchecks: " + ("all passed" if ok else "FAILED"))


if __name__ == "__main__":
    main()
