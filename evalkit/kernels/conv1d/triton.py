"""Causal depthwise conv1d + SiLU as Triton kernels, forward and backward (the semantics of ``ref.py``), for
widths 1-4 (Mamba's d_conv is 4; wider convs run the reference).

Why a kernel: in the zoo's graphed + compiled training step the conv ran as ATen's depthwise-conv2d kernels
(forward, input gradient, weight gradient), 0.23 of 1.45 ms of GPU time in the hybrid's step (kernels/NOTES.md
v13), for an op that moves a few MB. Here:

- forward: one program per (batch, BC channels, BL steps) tile; W shifted loads of x (the overlap is served by
  the cache; steps before 0 read the initial state), fp32 sums with fp32 weights, bias and SiLU, one store in
  x's dtype and x's layout (channel-major or channels-last: any strides);
- backward, two kernels: (1) per (batch, BC channels, segment of steps) program, walking its segment's tiles,
  the pre-activation is recomputed and the gradient before the SiLU, ``gs``, stored in fp32 in x's layout, with
  the weight's and the bias's gradient partials summed per program (reduced over programs in PyTorch:
  deterministic, no atomics); (2) the input gradient, ``gx[t] = Σ_j w_j gs[t + W-1-j]``, by W shifted loads of
  ``gs``. The initial state's gradient (W-1 positions) is a few PyTorch ops on the first W-1 steps of ``gs``.

Offsets are 32-bit unless an operand spans 2**31 elements (``BIG``: ``dispatch.needs_int64``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evalkit.kernels import dispatch

WARPS = 4
TILES = {False: (16, 128), True: (128, 16)}  # (channels, steps) per tile, by layout: channel-major / channels-last
MAX_WIDTH = 4  # the backward keeps one register tile per tap
TARGET_PROGRAMS = 1024  # the weight-gradient pass splits the steps into segments until about this many programs
MIN_TILES = 8  # ... each walking at least this many tiles
BWD_LAYOUT = "x"  # the backward's working layout where x's and the output gradient's differ: "x" or "gy"


@triton.jit
def _load_window(x, h0, b, c, s, cm, tm, L, sxb, sxc, sxl, shb, shc, shl, W: tl.constexpr, HAS_H0: tl.constexpr):
    """x at source positions s (steps; < 0 reads the initial state) for channels c: (BC, BL) fp32, 0 outside."""
    m = cm[:, None] & tm[None, :]
    v = tl.load(x + b * sxb + c[:, None] * sxc + s[None, :] * sxl, mask=m & (s >= 0)[None, :] & (s < L)[None, :],
                other=0.0).to(tl.float32)
    if HAS_H0:
        v += tl.load(h0 + b * shb + c[:, None] * shc + (s + (W - 1))[None, :] * shl, mask=m & (s < 0)[None, :],
                     other=0.0).to(tl.float32)
    return v


@triton.jit
def _tile(C, L, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BIG: tl.constexpr):
    """This program's (batch, channels, steps) tile of a (B, C, L) grid, 64-bit where BIG, and its masks."""
    b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    if BIG:
        b = b.to(tl.int64)
        c = c.to(tl.int64)
        t = t.to(tl.int64)
    return b, c, t, c < C, t < L


@triton.jit
def _conv_fwd_kernel(x, w, bias, h0, y, C, L, sxb, sxc, sxl, shb, shc, shl, syb, syc, syl,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BIG: tl.constexpr):
    b, c, t, cm, tm = _tile(C, L, BLOCK_C, BLOCK_L, BIG)
    acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(W):
        wj = tl.load(w + c * W + j, mask=cm, other=0.0)
        acc += wj[:, None] * _load_window(x, h0, b, c, t - (W - 1) + j, cm, tm, L, sxb, sxc, sxl, shb, shc, shl,
                                          W, HAS_H0)
    if HAS_BIAS:
        acc += tl.load(bias + c, mask=cm, other=0.0)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y + b * syb + c[:, None] * syc + t[None, :] * syl, acc.to(y.dtype.element_ty),
             mask=cm[:, None] & tm[None, :])


@triton.jit
def _conv_bwd_gs_kernel(x, w, bias, h0, gy, gs, pw, C, L, tiles_per_seg,
                        sxb, sxc, sxl, shb, shc, shl, sgb, sgc, sgl, ssb, ssc, ssl,
                        W: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                        SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BIG: tl.constexpr):
    # widths 1-4, one register tile per tap: the W shifted windows are loaded once per tile and kept for the
    # weight's gradient, whose products (and the bias's) accumulate elementwise over the segment's tiles and
    # are reduced over steps once at the end (a reduction per tap and tile cost more than the whole tile)
    b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    seg = tl.program_id(2)
    if BIG:
        b = b.to(tl.int64)
        c = c.to(tl.int64)
        seg = seg.to(tl.int64)
    cm = c < C
    jj = tl.arange(0, WP)
    bv = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bv = tl.load(bias + c, mask=cm, other=0.0)
    w0 = tl.load(w + c * W, mask=cm, other=0.0)
    if W > 1:
        w1 = tl.load(w + c * W + 1, mask=cm, other=0.0)
    if W > 2:
        w2 = tl.load(w + c * W + 2, mask=cm, other=0.0)
    if W > 3:
        w3 = tl.load(w + c * W + 3, mask=cm, other=0.0)
    a0 = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    a1 = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    a2 = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    a3 = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    ab = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for it in range(tiles_per_seg):
        t = (seg * tiles_per_seg + it) * BLOCK_L + tl.arange(0, BLOCK_L)
        tm = t < L
        v0 = _load_window(x, h0, b, c, t - (W - 1), cm, tm, L, sxb, sxc, sxl, shb, shc, shl, W, HAS_H0)
        acc = w0[:, None] * v0 + bv[:, None]
        if W > 1:
            v1 = _load_window(x, h0, b, c, t - (W - 2), cm, tm, L, sxb, sxc, sxl, shb, shc, shl, W, HAS_H0)
            acc += w1[:, None] * v1
        if W > 2:
            v2 = _load_window(x, h0, b, c, t - (W - 3), cm, tm, L, sxb, sxc, sxl, shb, shc, shl, W, HAS_H0)
            acc += w2[:, None] * v2
        if W > 3:
            v3 = _load_window(x, h0, b, c, t - (W - 4), cm, tm, L, sxb, sxc, sxl, shb, shc, shl, W, HAS_H0)
            acc += w3[:, None] * v3
        m = cm[:, None] & tm[None, :]
        g = tl.load(gy + b * sgb + c[:, None] * sgc + t[None, :] * sgl, mask=m, other=0.0).to(tl.float32)
        if SILU:  # d/ds s·σ(s) = σ(s) (1 + s (1 - σ(s)))
            sg = tl.sigmoid(acc)
            g = g * sg * (1.0 + acc * (1.0 - sg))
        tl.store(gs + b * ssb + c[:, None] * ssc + t[None, :] * ssl, g, mask=m)
        ab += g
        a0 += g * v0
        if W > 1:
            a1 += g * v1
        if W > 2:
            a2 += g * v2
        if W > 3:
            a3 += g * v3
    gw = tl.where(jj[None, :] == 0, tl.sum(a0, axis=1)[:, None], 0.0)
    gw += tl.where(jj[None, :] == W, tl.sum(ab, axis=1)[:, None], 0.0)  # the bias's partial in slot W
    if W > 1:
        gw += tl.where(jj[None, :] == 1, tl.sum(a1, axis=1)[:, None], 0.0)
    if W > 2:
        gw += tl.where(jj[None, :] == 2, tl.sum(a2, axis=1)[:, None], 0.0)
    if W > 3:
        gw += tl.where(jj[None, :] == 3, tl.sum(a3, axis=1)[:, None], 0.0)
    p = b * tl.num_programs(2) + seg  # this program's partial row
    tl.store(pw + (p * C + c[:, None]) * WP + jj[None, :], gw, mask=cm[:, None])


@triton.jit
def _conv_bwd_gx_kernel(gs, w, gx, C, L, ssb, ssc, ssl, sxb, sxc, sxl, W: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_L: tl.constexpr, BIG: tl.constexpr):
    b, c, t, cm, tm = _tile(C, L, BLOCK_C, BLOCK_L, BIG)
    acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(W):
        wj = tl.load(w + c * W + j, mask=cm, other=0.0)
        u = t + (W - 1 - j)  # the outputs that read x[t] through tap j
        acc += wj[:, None] * tl.load(gs + b * ssb + c[:, None] * ssc + u[None, :] * ssl,
                                     mask=cm[:, None] & (tm & (u < L))[None, :], other=0.0)
    tl.store(gx + b * sxb + c[:, None] * sxc + t[None, :] * sxl, acc.to(gx.dtype.element_ty),
             mask=cm[:, None] & tm[None, :])


def _last(x: torch.Tensor) -> bool:
    """Whether x (B, C, L) is channels-last (a (B, L, C) tensor's transpose)."""
    return x.stride(1) == 1 and x.shape[1] > 1 and x.shape[2] > 1


def _like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fresh (B, C, L) tensor in x's layout: channels-last when x is, else channel-major, so that a caller's
    transpose back stays contiguous and every access in a kernel runs along the same axis."""
    Bn, C, L = x.shape
    dtype = dtype or x.dtype
    if _last(x):
        return torch.empty(Bn, L, C, device=x.device, dtype=dtype).transpose(1, 2)
    return torch.empty(Bn, C, L, device=x.device, dtype=dtype)


def _h0_strides(h0: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if h0 is None else (h0.stride(0), h0.stride(1), h0.stride(2))


def conv_fwd(x, w, bias, h0, silu: bool) -> torch.Tensor:
    """y (B, C, L) in x's dtype and layout; w: (C, W) fp32 contiguous; bias fp32 or None; h0 (B, C, W-1) or None."""
    Bn, C, L = x.shape
    W = w.shape[1]
    y = _like(x)
    big = dispatch.needs_int64(x, y, h0)
    BC, BL = TILES[_last(x)]
    grid = (Bn, triton.cdiv(C, BC), triton.cdiv(L, BL))
    _conv_fwd_kernel[grid](x, w, bias if bias is not None else w, h0 if h0 is not None else x, y, C, L,
                           *x.stride(), *_h0_strides(h0), *y.stride(), W=W, HAS_BIAS=bias is not None,
                           HAS_H0=h0 is not None, SILU=silu, BLOCK_C=BC, BLOCK_L=BL, BIG=big, num_warps=WARPS)
    return y


def _segments(Bn: int, C: int, L: int, BC: int, BL: int) -> tuple[int, int]:
    """(segments, tiles per segment) for the weight-gradient pass: about TARGET_PROGRAMS programs in all, each
    walking at least MIN_TILES tiles (a program's fixed cost, its loads of the taps and its five reductions, is
    several tiles' worth: kernels/NOTES.md v13, the sweep)."""
    tiles = triton.cdiv(L, BL)
    want = max(1, min(tiles, triton.cdiv(TARGET_PROGRAMS, Bn * triton.cdiv(C, BC))))
    per = min(tiles, max(MIN_TILES, triton.cdiv(tiles, want)))
    return triton.cdiv(tiles, per), per


def conv_bwd(x, w, bias, h0, gy, silu: bool, need_h0: bool):
    """(gx, gw (C, W) fp32, gbias (C,) fp32 or None, gh0 (B, C, W-1) fp32 or None). Both passes run in one
    layout (``BWD_LAYOUT``): x's, copying the output gradient into it where it comes in the other one, or the
    output gradient's, where x is then read across its tiles; gx comes in that layout."""
    Bn, C, L = x.shape
    W = w.shape[1]
    WP = triton.next_power_of_2(W + 1)  # W taps and the bias
    if _last(gy) != _last(x) and BWD_LAYOUT == "x":
        gy = _like(x).copy_(gy)
    BC, BL = TILES[_last(gy)]
    segs, per = _segments(Bn, C, L, BC, BL)
    gs = _like(gy, torch.float32)  # the gradient before the SiLU
    pw = torch.empty(Bn * segs, C, WP, device=x.device, dtype=torch.float32)
    gx = _like(gy, x.dtype)
    big = dispatch.needs_int64(x, gs, gy, h0, gx)
    nc = triton.cdiv(C, BC)
    _conv_bwd_gs_kernel[(Bn, nc, segs)](x, w, bias if bias is not None else w, h0 if h0 is not None else x, gy, gs,
                                        pw, C, L, per, *x.stride(), *_h0_strides(h0), *gy.stride(), *gs.stride(),
                                        W=W, WP=WP, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, SILU=silu,
                                        BLOCK_C=BC, BLOCK_L=BL, BIG=big, num_warps=WARPS)
    _conv_bwd_gx_kernel[(Bn, nc, triton.cdiv(L, BL))](gs, w, gx, C, L, *gs.stride(), *gx.stride(), W=W, BLOCK_C=BC,
                                                      BLOCK_L=BL, BIG=big, num_warps=WARPS)
    part = pw.sum(0)  # (C, WP): one reduction for the weight's and the bias's partials
    gw = part[:, :W]
    gb = part[:, W] if bias is not None else None
    gh0 = None
    if need_h0:  # initial-state slot i (position i - (W-1)) feeds output u = i - j through tap j
        gh0 = torch.zeros(Bn, C, W - 1, device=x.device, dtype=torch.float32)
        for i in range(W - 1):
            for j in range(i + 1):
                if i - j < L:
                    gh0[:, :, i] += w[:, j] * gs[:, :, i - j]
    return gx, gw, gb, gh0


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu):  # noqa: ANN001, ANN205
        w = weight.detach().to(torch.float32).contiguous()
        b = bias.detach().to(torch.float32).contiguous() if bias is not None else None
        h0 = initial_state.detach() if initial_state is not None else None
        xd = x.detach()
        ctx.save_for_backward(xd, w, b, h0)
        ctx.silu = silu
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None,
                      initial_state.dtype if initial_state is not None else None)
        dispatch.note_variant("causal_conv1d", "triton")
        return conv_fwd(xd, w, b, h0, silu)

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        x, w, b, h0 = ctx.saved_tensors
        wd, bd, hd = ctx.dtypes
        gx, gw, gb, gh0 = conv_bwd(x, w, b, h0, gy, ctx.silu, need_h0=h0 is not None and ctx.needs_input_grad[3])
        return (gx if ctx.needs_input_grad[0] else None, gw.to(wd) if ctx.needs_input_grad[1] else None,
                gb.to(bd) if gb is not None and ctx.needs_input_grad[2] else None,
                gh0.to(hd) if gh0 is not None else None, None)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  initial_state: torch.Tensor | None, silu: bool) -> torch.Tensor:
    """y (B, C, L): ``ref.causal_conv1d_ref``'s output, differentiable in every tensor argument."""
    if not 1 <= weight.shape[-1] <= MAX_WIDTH:
        raise ValueError(f"conv width {weight.shape[-1]}: the kernels take 1-{MAX_WIDTH} (the reference any)")
    return _CausalConv1dFn.apply(x, weight, bias, initial_state, silu)
