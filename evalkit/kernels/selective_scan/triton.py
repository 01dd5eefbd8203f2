"""Triton selective scan (Mamba-1) forward, fused: softplus(Δ + bias), discretisation, the scan
with the state on chip, the D skip and the SiLU(z) gate, and the final state.

Same semantics and shapes as :func:`evalkit.kernels.selective_scan.ref.selective_scan_ref`
(u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,); initial_state: (B, D, N)).

One program per (batch, block of ``BD`` channels) walks the sequence in chunks of ``T`` steps with
its (BD, N) state in registers. Per chunk it loads (T, BD) tiles of u, Δ, z and (T, N) tiles of
B, C once for all BD channels (B and C are not re-read per channel), forms the pairs
(exp(Δ A), Δ B u) as a (T, BD, N) tile, runs an associative scan along T (stable: only products
of decays in (0, 1]), contracts with C over N and writes y. Every exp(Δ A) is evaluated exactly
once (L·D·N exponentials, the op's floor at state size 16).

That walk is ``variant="scan"``. On inputs contiguous along L (u, delta, z with stride(-1) == 1)
``_selective_scan_tkernel2`` (``variant="time2"``) runs instead: time along the lanes, the state
indices in turn, 2x faster on the H200 (kernels/NOTES.md v6). Which runs when:

- inference (no gradient), L-contiguous: time2; (B, L, D) views: the walk;
- training (``_SelectiveScanFn``), L-contiguous and N <= the time block: time2 storing the state
  entering each block and the pre-gate y, then ``triton_bwd.selective_scan_bwd_time`` (the same
  (channels, time) layout, blocks walked in reverse); otherwise the walk storing chunk-entry states
  (chunk ``BWD_CHUNK``), then ``triton_bwd.selective_scan_bwd`` (v3). Both backwards recompute a
  block's states from its stored entry state and run a reverse-time scan for the state gradient
  (see ``triton_bwd.py``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64, note_variant

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log1p(exp(x)) accurate for x << 0 (log(u) * e / (u - 1), u = 1 + e); identity above 20
    e = tl.exp(x)
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _selective_scan_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, st_ptr,
    Dm, L, N, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl, szb, szd, szl,
    syb, syd, syl,
    n_segs, c_per_seg,
    T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_STATES: tl.constexpr, SUMMARY: tl.constexpr, BIG: tl.constexpr = False,
):
    # Segments (program_id 2) split the chunks into n_segs runs of c_per_seg (one segment = the
    # whole sequence, the plain walk). SUMMARY (pass 1 of the segmented forward): from a zero
    # state, no y; store the segment's final state in hT and its total decay exp(A·ΣΔ) in st.
    # Otherwise each segment starts from its own h0 (pass 2, or the plain walk's initial state).
    b = tl.program_id(0)
    seg = tl.program_id(2)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, T)
    if BIG:  # an offset passes 2**31 elements (e.g. d_inner 4096 x 1M steps): 64-bit indices
        b = b.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_t = offs_t.to(tl.int64)
    md, mn = offs_d < Dm, offs_n < N
    mdn = md[:, None] & mn[None, :]
    # A in log2 units, so that exp(Δ A) = exp2(Δ A log2 e)
    A2 = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mdn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634  # (BD, BN)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    hn = offs_d[:, None] * N + offs_n[None, :]  # offsets into a (D, N) state
    so = (b * n_segs + seg) * Dm * N  # this segment's (D, N) state in (B, n_segs, D, N) buffers
    if HAS_H0:
        h = tl.load(h0_ptr + so + hn, mask=mdn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BD, BN), dtype=tl.float32)
    if SUMMARY:
        dsum = tl.zeros((BD,), dtype=tl.float32)
    last = (offs_t == T - 1)[:, None, None]  # (T, 1, 1)
    for c in range(seg * c_per_seg, tl.minimum(seg * c_per_seg + c_per_seg, n_chunks)):
        if STORE_STATES:  # the state entering each chunk, for the backward's recompute
            tl.store(st_ptr + (b * n_chunks + c) * Dm * N + hn, h, mask=mdn)
        t = c * T + offs_t
        mt = t < L
        mtd = mt[:, None] & md[None, :]
        mtn = mt[:, None] & mn[None, :]
        u = tl.load(u_ptr + b * sub + t[:, None] * sul + offs_d[None, :] * sud, mask=mtd, other=0.0)
        u = u.to(tl.float32)  # (T, BD)
        dl = tl.load(dl_ptr + b * sdb + t[:, None] * sdl + offs_d[None, :] * sdd, mask=mtd, other=0.0)
        dl = dl.to(tl.float32)
        if HAS_BIAS:
            dl += bias[None, :]
        if SOFTPLUS:
            dl = _softplus(dl)
        dl = tl.where(mtd, dl, 0.0)  # padded steps: decay 1, input 0, the state passes unchanged
        Bt = tl.load(B_ptr + b * sbb + t[:, None] * sbl + offs_n[None, :] * sbn, mask=mtn, other=0.0)
        Ct = tl.load(C_ptr + b * scb + t[:, None] * scl + offs_n[None, :] * scn, mask=mtn, other=0.0)
        Bt, Ct = Bt.to(tl.float32), Ct.to(tl.float32)  # (T, BN)
        dA = tl.exp2(dl[:, :, None] * A2[None, :, :])  # (T, BD, BN)
        dBu = (dl * u)[:, :, None] * Bt[:, None, :]  # (T, BD, BN)
        aa, bb = tl.associative_scan((dA, dBu), 0, _combine)
        hs = aa * h[None, :, :] + bb  # (T, BD, BN): the state after each step
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)  # (BD, BN): the state after the chunk
        if SUMMARY:
            dsum += tl.sum(dl, axis=0)
        else:
            y = tl.sum(hs * Ct[:, None, :], axis=2)  # (T, BD)
            if HAS_D:
                y += u * Dv[None, :]
            if HAS_Z:
                zz = tl.load(z_ptr + b * szb + t[:, None] * szl + offs_d[None, :] * szd, mask=mtd, other=0.0)
                zz = zz.to(tl.float32)
                y *= zz / (1.0 + tl.exp(-zz))
            tl.store(y_ptr + b * syb + t[:, None] * syl + offs_d[None, :] * syd,
                     y.to(y_ptr.dtype.element_ty), mask=mtd)
    tl.store(hT_ptr + so + hn, h, mask=mdn)
    if SUMMARY:  # the segment's decay: the product of its exp(Δ A) = exp(A ΣΔ)
        tl.store(st_ptr + so + hn, tl.exp2(dsum[:, None] * A2), mask=mdn)


@triton.jit
def _selective_scan_seq_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, st_ptr,
    Dm, L, N, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl, szb, szd, szl,
    syb, syd, syl,
    T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_STATES: tl.constexpr, BIG: tl.constexpr = False,
):
    """The same op as ``_selective_scan_kernel``, walking time step by step: each (d, n)
    recurrence is one register updated T times per chunk (the chunk loop is unrolled so the
    loads of a chunk can be issued ahead of its arithmetic). No log-depth scan: one exp, two
    multiply-adds and C's contraction per element and step (the variant the notes predicted
    could approach the exp floor; kernels/bench.py times both)."""
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    if BIG:  # an offset passes 2**31 elements (e.g. d_inner 4096 x 1M steps): 64-bit indices
        b = b.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
    md, mn = offs_d < Dm, offs_n < N
    mdn = md[:, None] & mn[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mdn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634  # (BD, BN)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    hn = offs_d[:, None] * N + offs_n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + b * Dm * N + hn, mask=mdn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BD, BN), dtype=tl.float32)
    for c in range(n_chunks):
        if STORE_STATES:
            tl.store(st_ptr + (b * n_chunks + c) * Dm * N + hn, h, mask=mdn)
        for s in tl.static_range(T):
            t = c * T + s
            if BIG:
                t = t.to(tl.int64)
            mdt = md & (offs_d * 0 + t < L)  # vector masks (the interpreter rejects scalar ones)
            mnt = mn & (offs_n * 0 + t < L)
            u = tl.load(u_ptr + b * sub + offs_d * sud + t * sul, mask=mdt, other=0.0).to(tl.float32)
            dl = tl.load(dl_ptr + b * sdb + offs_d * sdd + t * sdl, mask=mdt, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dl += bias
            if SOFTPLUS:
                dl = _softplus(dl)
            dl = tl.where(mdt, dl, 0.0)
            Bt = tl.load(B_ptr + b * sbb + offs_n * sbn + t * sbl, mask=mnt, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + b * scb + offs_n * scn + t * scl, mask=mnt, other=0.0).to(tl.float32)
            h = tl.exp2(dl[:, None] * A2) * h + (dl * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)  # (BD,)
            if HAS_D:
                y += u * Dv
            if HAS_Z:
                zz = tl.load(z_ptr + b * szb + offs_d * szd + t * szl, mask=mdt, other=0.0).to(tl.float32)
                y *= zz / (1.0 + tl.exp(-zz))
            tl.store(y_ptr + b * syb + offs_d * syd + t * syl, y.to(y_ptr.dtype.element_ty), mask=mdt)
    tl.store(hT_ptr + b * Dm * N + hn, h, mask=mdn)


@triton.jit
def _tblock_inputs(u_ptr, dl_ptr, b, offs_d, t, mdt, bias, sub, sud, sul, sdb, sdd, sdl,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    # One (BD, TB) block of the time-layout kernels (time2 and the time backward): u, the raw
    # δ (+ bias) x, and Δ = softplus(x) (or x), zero on padded steps (decay 1, input 0).
    u = tl.load(u_ptr + b * sub + offs_d[:, None] * sud + t[None, :] * sul, mask=mdt, other=0.0)
    x = tl.load(dl_ptr + b * sdb + offs_d[:, None] * sdd + t[None, :] * sdl, mask=mdt, other=0.0)
    x = x.to(tl.float32)
    if HAS_BIAS:
        x += bias[:, None]
    if SOFTPLUS:
        dl = _softplus(x)
    else:
        dl = x
    return u.to(tl.float32), x, tl.where(mdt, dl, 0.0)


@triton.jit
def _selective_scan_tkernel2(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, st_ptr, yp_ptr,
    Dm, L, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl, szb, szd, szl,
    syb, syd, syl,
    N: tl.constexpr, TB: tl.constexpr, BD: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, BIG: tl.constexpr = False, STORE_STATES: tl.constexpr = False,
    STORE_Y: tl.constexpr = False,
):
    """The selective scan with time across the threads (mamba-ssm's CUDA layout): a program owns
    ``BD`` channels and walks the sequence in blocks of ``TB`` steps; the (BD, TB) tile puts TB along
    the lanes (a few consecutive steps per thread). For each state index n in turn it scans the
    (BD, TB) pairs (exp(Δ A_n), Δ u B_n) along time (in-thread, then across lanes), applies the
    carried h[:, n] and accumulates C_n h into y, so C's contraction over N is an in-thread
    multiply-add; Δ, u and softplus are computed once per block for all N, and B_n, C_n are read
    once per block for all BD channels. A (in log2 units) and the carried state sit in columns
    0..N-1 of (BD, TB) tiles and the state loop is unrolled (N is a compile-time constant, N <= TB),
    so A's columns are loop invariants and the carry moves by in-row reductions, never by a layout
    conversion through shared memory (what made the first version, with (BD, N) tiles, slower:
    kernels/NOTES.md v6).

    The training forward (for ``triton_bwd._selective_scan_bwd_tkernel``): STORE_STATES stores the
    state entering each block, (B, n_chunks, D, N) fp32 at ``st_ptr``; STORE_Y (with HAS_Z) also
    the pre-gate output (after the D skip, before SiLU(z)) at ``yp_ptr``, laid out as y, so the
    backward has gz and gy before its state loop. Both off (inference): the same code as before."""
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_t = tl.arange(0, TB)
    if BIG:
        b = b.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_t = offs_t.to(tl.int64)
    md = offs_d < Dm
    mdn = md[:, None] & (offs_t < N)[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * sad + offs_t[None, :] * san, mask=mdn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634  # (BD, TB): A[:, n] in column n
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BD,), dtype=tl.float32)  # unused (the block loads add no bias)
    hn_offs = offs_d[:, None] * N + offs_t[None, :]
    if HAS_H0:
        H = tl.load(h0_ptr + b * Dm * N + hn_offs, mask=mdn, other=0.0).to(tl.float32)
    else:
        H = tl.zeros((BD, TB), dtype=tl.float32)  # h[:, n] in column n
    last = (offs_t == TB - 1)[None, :]
    for c in range(n_chunks):
        if STORE_STATES:  # the state entering the block, for the backward's recompute
            tl.store(st_ptr + (b * n_chunks + c) * Dm * N + hn_offs, H, mask=mdn)
        t = c * TB + offs_t
        mt = t < L
        mdt = md[:, None] & mt[None, :]
        u, _, dl = _tblock_inputs(u_ptr, dl_ptr, b, offs_d, t, mdt, bias, sub, sud, sul, sdb, sdd, sdl,
                                  HAS_BIAS, SOFTPLUS)  # (BD, TB)
        dlu = dl * u
        y = tl.zeros((BD, TB), dtype=tl.float32)
        for n in tl.static_range(N):
            sel = (offs_t == n)[None, :]
            a2 = tl.sum(tl.where(sel, A2, 0.0), axis=1)  # (BD,), loop-invariant
            h_n = tl.sum(tl.where(sel, H, 0.0), axis=1)
            Bn = tl.load(B_ptr + b * sbb + n * sbn + t * sbl, mask=mt, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + b * scb + n * scn + t * scl, mask=mt, other=0.0).to(tl.float32)
            dA = tl.exp2(dl * a2[:, None])
            aa, bb = tl.associative_scan((dA, dlu * Bn[None, :]), 1, _combine)
            hs = aa * h_n[:, None] + bb
            y += hs * Cn[None, :]
            H = tl.where(sel, tl.sum(tl.where(last, hs, 0.0), axis=1)[:, None], H)
        if HAS_D:
            y += u * Dv[:, None]
        if HAS_Z:
            if STORE_Y:  # pre-gate y, for the backward's gz
                tl.store(yp_ptr + b * syb + offs_d[:, None] * syd + t[None, :] * syl,
                         y.to(yp_ptr.dtype.element_ty), mask=mdt)
            zz = tl.load(z_ptr + b * szb + offs_d[:, None] * szd + t[None, :] * szl, mask=mdt, other=0.0)
            zz = zz.to(tl.float32)
            y *= zz / (1.0 + tl.exp(-zz))
        tl.store(y_ptr + b * syb + offs_d[:, None] * syd + t[None, :] * syl,
                 y.to(y_ptr.dtype.element_ty), mask=mdt)
    tl.store(hT_ptr + b * Dm * N + hn_offs, H, mask=mdn)


def selective_scan_fwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None, chunk: int | None = None, block_d: int | None = None,
    num_warps: int | None = None, store_states: bool = False, variant: str | None = None, segments: int = 1,
    maxnreg: int | None = None, ypre: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward only (no autograd): y (B, D, L) in u's dtype, the final state (B, D, N) fp32 and,
    with ``store_states``, the state entering each chunk of ``chunk`` steps, (B, chunks, D, N)
    fp32 (what the backward recomputes from; L·D·N/chunk floats, not L·D·N).

    ``store_states`` runs with ``variant`` "scan" (the v3 walk, for ``triton_bwd.selective_scan_bwd``;
    the default) or "time2" (for ``triton_bwd.selective_scan_bwd_time``). ``ypre`` (time2 with
    ``store_states`` and z): a contiguous (B, D, L) buffer in u's dtype that receives the pre-gate
    output (after the D skip, before the SiLU(z) gate), which the time backward reads for gz and gy.

    ``variant`` (None: "cuda" where ``cuda.available`` holds, else ``DEFAULT_VARIANT``, for inputs
    contiguous along L without stored states or segments; otherwise "scan"): "cuda" (the CUDA C++
    inference forward compiled by NVRTC: ``cuda_serial.py``'s state-split layout where its warps fill
    the GPU, else ``cuda.py``'s time-parallel one; the fastest on the H200, NOTES.md v10, v12), "scan"
    (``_selective_scan_kernel``: channels x N across the threads, chunks of time scanned in-thread),
    "seq" (``_selective_scan_seq_kernel``, step by step) or "time2" (``_selective_scan_tkernel2``: time
    along the lanes, the N state indices in turn; the fastest Triton variant). Two other time-parallel variants ("time", "time3") were measured
    slower and removed (kernels/NOTES.md v6).
    ``chunk`` / ``block_d`` / ``num_warps`` default to ``VARIANT_CONFIG`` (kernels/NOTES.md has the
    sweeps behind them); ``maxnreg`` caps time2's registers per thread (a tuning knob).

    ``segments`` (scan variant, without ``store_states``): cut the sequence into that many runs
    of chunks and scan them in parallel, in two passes (each segment's state from zero and its
    total decay; a short sequential combine of the segment states; then each segment again from
    its true entering state, writing y). Twice the exponentials, ``segments`` times the parallel
    recurrences. Measured on the H100 (kernels/NOTES.md, v5): 1.6-1.8x *slower* than the plain
    walk at d_inner 4096 for every segment count, i.e. the walk is bound by its per-element work,
    not by too few parallel recurrences; kept as an option (default 1 = the plain walk)."""
    auto_cuda = False  # the CUDA forward picked here, not asked for: a compile failure falls back
    if variant is None:  # stored states: the v3 walk's unless time2 is asked for (the autograd
        # Function does); the time kernels read (B, L, D) views with stride D (slower: NOTES.md v6)
        contiguous_l = all(t is None or t.stride(-1) == 1 for t in (u, delta, z))
        variant = DEFAULT_VARIANT if contiguous_l and not store_states and segments == 1 else "scan"
        if variant == DEFAULT_VARIANT and not _INTERPRET:
            from evalkit.kernels.selective_scan import cuda as _cuda

            if _cuda.available(u, delta, A, B, C, z):  # the CUDA C++ forward (NVRTC): NOTES.md v10
                variant, auto_cuda = "cuda", True
    if variant == "cuda":
        if store_states or segments != 1 or ypre is not None:
            raise ValueError("variant 'cuda' is the inference forward: no stored states, segments or ypre")
        from evalkit.kernels.selective_scan import cuda as _cuda

        try:
            y, final = _cuda.selective_scan_fwd_cuda(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                                     delta_softplus=delta_softplus, initial_state=initial_state)
        except _cuda.CompileError as e:  # NVRTC or the driver refused the module: Triton from now on
            if not auto_cuda:
                raise
            _cuda.disable(str(e))
            variant = DEFAULT_VARIANT
        else:
            return y, final, None  # (the CUDA module recorded which of its layouts ran)
    if store_states and variant not in ("scan", "time2"):
        raise ValueError("store_states needs variant 'scan' or 'time2'")
    if ypre is not None and not (store_states and variant == "time2" and z is not None):
        raise ValueError("ypre needs store_states, variant 'time2' and z")
    cfg = dict(zip(("chunk", "block_d", "num_warps"), VARIANT_CONFIG[variant]))
    chunk = chunk or cfg["chunk"]
    block_d = block_d or cfg["block_d"]
    num_warps = num_warps or cfg["num_warps"]
    if variant == "time2":  # A and the state live in the first N columns of a (channels, chunk) tile
        chunk = max(chunk, triton.next_power_of_2(A.shape[1]))
    batch, Dm, L = u.shape
    N = A.shape[1]
    BN = triton.next_power_of_2(N)
    BD = min(block_d, triton.next_power_of_2(Dm))
    n_chunks = max(1, triton.cdiv(L, chunk))
    y = torch.empty(batch, Dm, L, device=u.device, dtype=u.dtype)
    final = torch.empty(batch, Dm, N, device=u.device, dtype=torch.float32)
    states = (torch.empty(batch, n_chunks, Dm, N, device=u.device, dtype=torch.float32)
              if store_states else None)
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else final
    zt = z if z is not None else u
    args = (u, delta, A, B, C, D if D is not None else u, zt, delta_bias if delta_bias is not None else u)
    strides = (*u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zt.stride(), *y.stride())
    big = needs_int64(u, delta, B, C, zt, y, states)
    flags = dict(T=chunk, BD=BD, BN=BN, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=delta_softplus, BIG=big, num_warps=num_warps)
    S = 1 if store_states or variant != "scan" else max(1, min(segments, n_chunks))
    note_variant("selective_scan", variant if S == 1 else "scan-segmented")
    if S == 1:
        grid = (batch, triton.cdiv(Dm, BD))
        if variant == "time2":
            if ypre is not None:
                assert ypre.shape == y.shape and ypre.stride() == y.stride() and ypre.dtype == y.dtype
            extra = {}
            if store_states:  # the training forward; absent (defaults False), the inference kernel as before
                extra = dict(STORE_STATES=True, STORE_Y=ypre is not None)
            _selective_scan_tkernel2[grid](*args, h0, y, final, states if states is not None else final,
                                           ypre if ypre is not None else y, Dm, L, n_chunks, *strides,
                                           N=N, TB=chunk, BD=BD, HAS_D=D is not None, HAS_Z=z is not None,
                                           HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                                           HAS_H0=initial_state is not None, BIG=big, num_warps=num_warps,
                                           **extra,
                                           **({"maxnreg": maxnreg} if maxnreg and not _INTERPRET else {}))
        elif variant == "seq":
            _selective_scan_seq_kernel[grid](*args, h0, y, final, states if states is not None else final,
                                             Dm, L, N, n_chunks, *strides, HAS_H0=initial_state is not None,
                                             STORE_STATES=store_states, **flags)
        else:
            _selective_scan_kernel[(*grid, 1)](*args, h0, y, final, states if states is not None else final,
                                               Dm, L, N, n_chunks, *strides, 1, n_chunks,
                                               HAS_H0=initial_state is not None, STORE_STATES=store_states,
                                               SUMMARY=False, **flags)
        return y, final, states
    per = triton.cdiv(n_chunks, S)
    S = triton.cdiv(n_chunks, per)  # no empty segment
    grid = (batch, triton.cdiv(Dm, BD), S)
    local = torch.empty(batch, S, Dm, N, device=u.device, dtype=torch.float32)
    decay = torch.empty_like(local)
    _selective_scan_kernel[grid](*args, local, y, local, decay, Dm, L, N, n_chunks, *strides, S, per,
                                 HAS_H0=False, STORE_STATES=False, SUMMARY=True, **flags)
    entering = torch.empty_like(local)  # the true state entering each segment
    h = initial_state.to(torch.float32) if initial_state is not None else torch.zeros_like(final)
    for s in range(S):
        entering[:, s] = h
        h = decay[:, s] * h + local[:, s]
    _selective_scan_kernel[grid](*args, entering, y, local, decay, Dm, L, N, n_chunks, *strides, S, per,
                                 HAS_H0=True, STORE_STATES=False, SUMMARY=False, **flags)
    final.copy_(local[:, S - 1])  # the last segment's final state (pass 2 wrote each segment's)
    return y, final, states


class _SelectiveScanFn(torch.autograd.Function):
    """Forward storing what the backward needs, and the backward. Where ``cuda.available`` holds (a GPU,
    NVRTC) the CUDA C++ pair: the CUDA forward storing the state entering every 32·K steps and the
    pre-gate y, then ``cuda_bwd.selective_scan_bwd_cuda`` (``EVALKIT_SCAN_CUDA_BWD=0``: the Triton time
    backward instead). Otherwise, inputs contiguous along
    L (u, delta, z with stride(-1) == 1) and N <= the time block: the time-layout pair, the time2
    forward (or, where ``cuda.available`` holds, the CUDA C++ forward, which stores the same) storing
    the state entering each block and the pre-gate y, then
    ``triton_bwd.selective_scan_bwd_time`` (per block, recompute the states from the entry state
    for each n in turn, reverse-time scan for the state gradient). Otherwise (e.g. (B, L, D) views)
    the v3 pair: the walk storing chunk-entry states (chunk ``BWD_CHUNK``), then
    ``triton_bwd.selective_scan_bwd``. Which backward ran is noted as "selective_scan_bwd:<variant>"."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):  # type: ignore[override]
        from evalkit.kernels.selective_scan.triton_bwd import TIME_BWD_CONFIG

        grad = any(ctx.needs_input_grad[:9])
        kw = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, initial_state=initial_state)
        TB = TIME_BWD_CONFIG[0]
        time = (grad and all(t is None or t.stride(-1) == 1 for t in (u, delta, z))
                and triton.next_power_of_2(A.shape[1]) <= TB)
        ypre = None
        path = "time2" if time else "scan"  # which backward runs
        if time:
            if z is not None:
                ypre = torch.empty(u.shape, device=u.device, dtype=u.dtype)
            y = None
            if not _INTERPRET:
                from evalkit.kernels.selective_scan import cuda as _cuda
                from evalkit.kernels.selective_scan import cuda_bwd as _cuda_bwd

                if _cuda.available(u, delta, A, B, C, z) and _cuda_bwd.enabled():
                    try:  # the CUDA pair: states every 32·K steps for the CUDA backward (NOTES.md v11)
                        _cuda_bwd.prepare(u, delta, B, C, D, z, delta_bias, delta_softplus, ypre)
                        y, final, states = _cuda.selective_scan_fwd_cuda_train(
                            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                            _cuda_bwd.store_tb(), ypre)
                        path = "cuda"
                    except _cuda.CompileError as e:
                        _cuda.disable(str(e))
                if y is None and _cuda.available(u, delta, A, B, C, z) and _cuda.supports_store(TB):
                    try:  # the CUDA forward storing the same states and pre-gate y (NOTES.md v10)
                        y, final, states = _cuda.selective_scan_fwd_cuda_train(
                            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, TB, ypre)
                    except _cuda.CompileError as e:
                        _cuda.disable(str(e))
            if y is None:
                block_d, num_warps = TIME_TRAIN_FWD_CONFIG
                y, final, states = selective_scan_fwd(u, delta, A, B, C, **kw, chunk=TB, block_d=block_d,
                                                      num_warps=num_warps, store_states=True, variant="time2",
                                                      ypre=ypre)
        else:
            y, final, states = selective_scan_fwd(u, delta, A, B, C, **kw, chunk=BWD_CHUNK if grad else None,
                                                  store_states=grad, variant="scan" if grad else None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states, ypre)
        ctx.delta_softplus = delta_softplus
        ctx.path = path
        return y, final

    @staticmethod
    def backward(ctx, gy, gfinal):  # type: ignore[override]
        from evalkit.kernels.selective_scan.triton_bwd import selective_scan_bwd, selective_scan_bwd_time

        u, delta, A, B, C, D, z, bias, h0, states, ypre = ctx.saved_tensors
        if ctx.path == "cuda":
            from evalkit.kernels.selective_scan.cuda_bwd import selective_scan_bwd_cuda

            note_variant("selective_scan_bwd", "cuda")
            grads = selective_scan_bwd_cuda(u, delta, A, B, C, D, z, bias, h0, states, ypre, gy, gfinal,
                                            delta_softplus=ctx.delta_softplus)
        elif ctx.path == "time2":
            note_variant("selective_scan_bwd", "time2")
            grads = selective_scan_bwd_time(u, delta, A, B, C, D, z, bias, h0, states, ypre, gy, gfinal,
                                            delta_softplus=ctx.delta_softplus)
        else:
            note_variant("selective_scan_bwd", "scan")
            grads = selective_scan_bwd(u, delta, A, B, C, D, z, bias, h0, states, gy, gfinal,
                                       delta_softplus=ctx.delta_softplus, chunk=BWD_CHUNK)
        return (*grads, None)


# Per variant: (steps per chunk, channels per program, warps). "scan" and "seq": the fastest of
# the H100 sweeps (kernels/NOTES.md, v2-v3); time2: the H200 sweeps, v6 (TB 128 / BD 32 / 8 warps,
# 6.4 ms at 64k) then v8 (one-warp programs: TB 128 / BD 4 / 1 warp 5.08 ms, the same 16 (t, d) pairs
# per thread and registers; configs with 8 pairs per thread were slower).
VARIANT_CONFIG = {"scan": (32, 8, 4), "seq": (16, 8, 4), "time2": (128, 4, 1)}
# ``selective_scan_fwd``'s Triton variant without stored states (inference, prefill) on inputs contiguous
# along L: time2 was 1.9-2.0x faster than the walk at d_inner 4096 from 4k to 1M on the H200
# (kernels/NOTES.md v6). Where ``cuda.available`` holds (a GPU, NVRTC, N <= 32, unit L strides) the CUDA
# C++ forward runs instead: 1.5x faster than time2 on the H200 (NOTES.md v10). For (B, L, D) views,
# segments, or ``store_states`` without a variant it is "scan"; the autograd Function asks for time2
# (or the CUDA training forward) with stored states itself (L-contiguous inputs).
DEFAULT_VARIANT = "time2"

# The chunk of the v3 walk when it stores states for the v3 backward (strided inputs): the backward
# walks the same chunks (its tile of T x channels x N is the size limit: see kernels/NOTES.md).
BWD_CHUNK = 16
# The training forward of the time pair (time2 storing states and the pre-gate y): (channels per
# program, warps); its steps per block are the time backward's (triton_bwd.TIME_BWD_CONFIG), which
# walks the same blocks. H200 sweeps at TB 128 and 64k: session 6 (kernels/results-h200-v7.md, run 3)
# BD 16 / 4 warps 8.55 ms, BD 32 / 8 warps 8.89; session 7 (results-h200-v8.md, run 1) one-warp
# programs: BD 4 / 1 warp 6.42 ms (as fast as inference time2's 6.36), BD 8 / 2 warps 7.89,
# BD 16 / 4 warps 8.29, BD 2 / 1 warp 9.91.
TIME_TRAIN_FWD_CONFIG = (4, 1)


def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None, return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton selective scan with the semantics of :func:`selective_scan_ref`; differentiable
    (Triton backward)."""
    if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)):
        y, final, _ = selective_scan_fwd(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                         delta_softplus=delta_softplus, initial_state=initial_state)
        return (y, final) if return_final_state else y
    y, final = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                      delta_softplus)
    return (y, final) if return_final_state else y
