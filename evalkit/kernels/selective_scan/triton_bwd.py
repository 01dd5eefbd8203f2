"""Triton selective scan (Mamba-1) backward: two kernels, no stored per-step states.

Which runs (``triton._SelectiveScanFn``): inputs contiguous along L (u, delta, z) with N <= the
time block run ``_selective_scan_bwd_tkernel`` (``selective_scan_bwd_time``, after the time2
forward stored block-entry states and the pre-gate y); others (e.g. (B, L, D) views) the v3 kernel
``_selective_scan_bwd_kernel`` (``selective_scan_bwd``, after the walk stored chunk-entry states).
Both use the math below.

Per (batch b, channel d, state n), with Δ = softplus(δ + bias) and the forward

    h_t = a_t h_{t-1} + b_t,   a_t = exp(Δ_t A),   b_t = Δ_t B_t u_t,   y_t = <C_t, h_t> + D u_t,
    out_t = y_t · silu(z_t),

the gradient of the state, λ_t = ∂L/∂h_t, runs backwards in time:

    λ_t = gy_t C_t + a_{t+1} λ_{t+1}      (gy = ∂L/∂y; λ after the last step = ∂L/∂final state)

and every input gradient is a per-step product of λ with forward quantities:
∂b_t = λ_t; ∂a_t = λ_t h_{t-1}, where a_t h_{t-1} = h_t − b_t (no shifted state needed); so
gΔ_t = Σ_n λ_t (u_t B_t + A (h_t − b_t)), gu_t = Σ_n λ_t Δ_t B_t + D gy_t,
gB_t = Σ_d λ_t Δ_t u_t, gC_t = Σ_d gy_t h_t, gA = Σ_t λ_t Δ_t (h_t − b_t), gD = Σ_t gy_t u_t,
gδ = gΔ · sigmoid(δ + bias), g(bias) = Σ gδ, g(h0) = a_0 λ_0.

v3 (``_selective_scan_bwd_kernel``): one program per (batch, block of channels) walks the chunks
of ``T`` steps from the last to the first, (T, channels, N) tiles. Per chunk it reloads the inputs,
recomputes the chunk's states from the state the forward stored at the chunk's entry (one forward
scan, as in the forward kernel), then runs the reverse scan for λ. The reverse recurrence's
coefficient a_{t+1} belongs to the *next* step; instead of shifting a tile, the scan carries it:
a segment [i, j] is summarised by (a_i, Q, P) with λ_i = P + Q · a_{j+1} λ_{j+1}, which is
associative (see ``_combine_rev``). The carry between chunks is G = a_first λ_first, ∂L/∂(state
before the chunk).

The time kernel (``_selective_scan_bwd_tkernel``) does the same per block of ``TB`` steps in the
layout of the time2 forward: (channels, TB) tiles, time along the lanes, the N state indices in
turn (both scans per n, along time), the carry G and gA in columns of (channels, TB) tiles. It reads
the pre-gate y that the forward stored (so gy is known before the state loop, which then needs no
Σ_n C_n h_t first), at the cost of one (B, D, L) tensor in u's dtype, as mamba_ssm's CUDA backward.

B and C are shared by all channels: their gradients are sums over channel blocks, added with
atomics into fp32 buffers (order-dependent rounding, as in mamba_ssm's CUDA backward). A, D and the
bias get per-batch fp32 partials, summed here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64
from evalkit.kernels.selective_scan.triton import _combine, _softplus, _tblock_inputs

_LOG2E = 1.4426950408889634


@triton.jit
def _combine_rev(f2, q2, p2, f1, q1, p1):
    # Reverse scan: the first operand is the later segment R, the second the earlier segment L
    # (Triton's reverse scan is flip, scan, flip). L then R: first = f_L, Q = Q_L f_R Q_R,
    # P = P_L + Q_L f_R P_R.
    w = q1 * f2
    return f1, w * q2, p1 + w * p2


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, st_ptr, go_ptr, gT_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    Dm, L, N, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl, szb, szd, szl,
    sgb, sgd, sgl, sgub, sgud, sgul, sgdb, sgdd, sgdl, sgzb, sgzd, sgzl,
    T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GT: tl.constexpr, BIG: tl.constexpr = False,
):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, T)
    if BIG:  # an offset passes 2**31 elements: 64-bit indices (see triton.needs_int64)
        b = b.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_t = offs_t.to(tl.int64)
    md, mn = offs_d < Dm, offs_n < N
    mdn = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mdn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634  # (BD, BN), log2 units
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    hn = offs_d[:, None] * N + offs_n[None, :]  # offsets into a (D, N) state
    if HAS_GT:
        G = tl.load(gT_ptr + b * Dm * N + hn, mask=mdn, other=0.0).to(tl.float32)
    else:
        G = tl.zeros((BD, BN), dtype=tl.float32)  # ∂L/∂(state after the current chunk), from later steps
    gA = tl.zeros((BD, BN), dtype=tl.float32)
    gD = tl.zeros((BD,), dtype=tl.float32)
    gbias = tl.zeros((BD,), dtype=tl.float32)
    first = (offs_t == 0)[:, None, None]
    ones = tl.full((T, BD, BN), 1.0, tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * T + offs_t
        mt = t < L
        mtd = mt[:, None] & md[None, :]
        mtn = mt[:, None] & mn[None, :]
        u = tl.load(u_ptr + b * sub + t[:, None] * sul + offs_d[None, :] * sud, mask=mtd, other=0.0)
        u = u.to(tl.float32)  # (T, BD)
        x = tl.load(dl_ptr + b * sdb + t[:, None] * sdl + offs_d[None, :] * sdd, mask=mtd, other=0.0)
        x = x.to(tl.float32)
        if HAS_BIAS:
            x += bias[None, :]
        if SOFTPLUS:
            dl = _softplus(x)
        else:
            dl = x
        dl = tl.where(mtd, dl, 0.0)
        Bt = tl.load(B_ptr + b * sbb + t[:, None] * sbl + offs_n[None, :] * sbn, mask=mtn, other=0.0)
        Ct = tl.load(C_ptr + b * scb + t[:, None] * scl + offs_n[None, :] * scn, mask=mtn, other=0.0)
        Bt, Ct = Bt.to(tl.float32), Ct.to(tl.float32)  # (T, BN)

        # recompute the chunk's states from the state entering it
        h0 = tl.load(st_ptr + (b * n_chunks + c) * Dm * N + hn, mask=mdn, other=0.0)
        dA = tl.exp2(dl[:, :, None] * A2[None, :, :])  # (T, BD, BN)
        dBu = (dl * u)[:, :, None] * Bt[:, None, :]
        aa, bb = tl.associative_scan((dA, dBu), 0, _combine)
        hs = aa * h0[None, :, :] + bb  # (T, BD, BN)
        y = tl.sum(hs * Ct[:, None, :], axis=2)  # (T, BD), before D skip and gate
        if HAS_D:
            y += u * Dv[None, :]

        go = tl.load(go_ptr + b * sgb + t[:, None] * sgl + offs_d[None, :] * sgd, mask=mtd, other=0.0)
        go = go.to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + b * szb + t[:, None] * szl + offs_d[None, :] * szd, mask=mtd, other=0.0)
            zz = zz.to(tl.float32)
            sz = 1.0 / (1.0 + tl.exp(-zz))
            gz = go * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(gz_ptr + b * sgzb + t[:, None] * sgzl + offs_d[None, :] * sgzd,
                     gz.to(gz_ptr.dtype.element_ty), mask=mtd)
            gy = go * zz * sz
        else:
            gy = go
        gC = tl.sum(gy[:, :, None] * hs, axis=1)  # (T, BN), this block's share
        tl.atomic_add(gC_ptr + b * N * L + offs_n[None, :] * L + t[:, None], gC, mask=mtn)

        # reverse scan for λ, then the carry into the previous chunk
        _, q, p = tl.associative_scan((dA, ones, gy[:, :, None] * Ct[:, None, :]), 0, _combine_rev,
                                      reverse=True)
        lam = p + q * G[None, :, :]  # (T, BD, BN)
        G = tl.sum(tl.where(first, dA * lam, 0.0), axis=0)

        ha = lam * (hs - dBu)  # λ_t a_t h_{t-1}
        lamB = tl.sum(lam * Bt[:, None, :], axis=2)  # (T, BD)
        gdl = u * lamB + tl.sum(ha * A[None, :, :], axis=2)  # ∂L/∂Δ
        gu = dl * lamB
        if HAS_D:
            gu += gy * Dv[None, :]
            gD += tl.sum(gy * u, axis=0)
        gA += tl.sum(ha * dl[:, :, None], axis=0)
        gB = tl.sum(lam * (dl * u)[:, :, None], axis=1)  # (T, BN)
        tl.atomic_add(gB_ptr + b * N * L + offs_n[None, :] * L + t[:, None], gB, mask=mtn)
        if SOFTPLUS:
            gdl = gdl / (1.0 + tl.exp(-x))  # softplus' = sigmoid
        gdl = tl.where(mtd, gdl, 0.0)
        if HAS_BIAS:
            gbias += tl.sum(gdl, axis=0)
        tl.store(gu_ptr + b * sgub + t[:, None] * sgul + offs_d[None, :] * sgud,
                 gu.to(gu_ptr.dtype.element_ty), mask=mtd)
        tl.store(gdl_ptr + b * sgdb + t[:, None] * sgdl + offs_d[None, :] * sgdd,
                 gdl.to(gdl_ptr.dtype.element_ty), mask=mtd)
    tl.store(gA_ptr + b * Dm * N + hn, gA, mask=mdn)
    tl.store(gh0_ptr + b * Dm * N + hn, G, mask=mdn)
    if HAS_D:
        tl.store(gD_ptr + b * Dm + offs_d, gD, mask=md)
    if HAS_BIAS:
        tl.store(gbias_ptr + b * Dm + offs_d, gbias, mask=md)


def _grad_buffers(u, delta, A, D, z, delta_bias, gy, gfinal):
    """Both backwards' outputs: gy (zeros when None) and the final state's gradient (fp32, or None)
    as the kernels read them, then gu, gΔ, gz in their inputs' dtypes, fp32 buffers for gB and gC
    (atomics over channel blocks) and per-batch fp32 partials of gA, gD, g(bias), and g(h0)."""
    batch, Dm, L = u.shape
    N = A.shape[1]
    dev = u.device
    f32 = dict(device=dev, dtype=torch.float32)
    if gy is None:
        gy = torch.zeros(batch, Dm, L, device=dev, dtype=u.dtype)
    gT = gfinal.to(torch.float32).contiguous() if gfinal is not None else None
    bufs = (torch.empty(batch, Dm, L, device=dev, dtype=u.dtype),
            torch.empty(batch, Dm, L, device=dev, dtype=delta.dtype),
            torch.empty(batch, Dm, L, device=dev, dtype=z.dtype) if z is not None else None,
            torch.zeros(batch, N, L, **f32), torch.zeros(batch, N, L, **f32),
            torch.empty(batch, Dm, N, **f32),
            torch.empty(batch, Dm, **f32) if D is not None else None,
            torch.empty(batch, Dm, **f32) if delta_bias is not None else None,
            torch.empty(batch, Dm, N, **f32))
    return gy, gT, bufs


def _grads_out(bufs, A, B, C, D, delta_bias, initial_state):
    """The gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) from ``_grad_buffers``'
    buffers after a kernel: partials summed over the batch, each in its input's dtype."""
    gu, gdl, gz, gB, gC, gA, gD, gbias, gh0 = bufs
    return (
        gu, gdl, gA.sum(0).to(A.dtype), gB.to(B.dtype), gC.to(C.dtype),
        gD.sum(0).to(D.dtype) if D is not None else None, gz,
        gbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
        gh0.to(initial_state.dtype) if initial_state is not None else None,
    )


def selective_scan_bwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, states: torch.Tensor, gy: torch.Tensor | None,
    gfinal: torch.Tensor | None, delta_softplus: bool = True, chunk: int = 16, block_d: int = 8,
    num_warps: int = 4,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state), each in its input's
    dtype (None for an absent input). ``states``: (B, chunks, D, N) fp32, the state entering each
    chunk of ``chunk`` steps, from ``selective_scan_fwd(..., store_states=True)``; gy: (B, D, L)
    (None: zero), gfinal: (B, D, N) (None: zero)."""
    batch, Dm, L = u.shape
    N = A.shape[1]
    n_chunks = states.shape[1]
    assert n_chunks == max(1, triton.cdiv(L, chunk)), "states were stored with another chunk"
    gy, gT, (gu, gdl, gz, gB, gC, gA, gD, gbias, gh0) = _grad_buffers(u, delta, A, D, z, delta_bias, gy, gfinal)
    zt = z if z is not None else u
    gzt = gz if gz is not None else gu
    block_d = min(block_d, triton.next_power_of_2(Dm))
    grid = (batch, triton.cdiv(Dm, block_d))
    _selective_scan_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, zt, delta_bias if delta_bias is not None else A,
        states, gy, gT if gT is not None else gh0,
        gu, gdl, gzt, gB, gC, gA, gD if gD is not None else gA, gbias if gbias is not None else gA, gh0,
        Dm, L, N, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zt.stride(),
        *gy.stride(), *gu.stride(), *gdl.stride(), *gzt.stride(),
        T=chunk, BD=block_d, BN=triton.next_power_of_2(N),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_GT=gT is not None, num_warps=num_warps,
        BIG=needs_int64(u, delta, B, C, zt, gy, gu, gdl, gzt, states),
    )
    return _grads_out((gu, gdl, gz, gB, gC, gA, gD, gbias, gh0), A, B, C, D, delta_bias, initial_state)


@triton.jit
def _bwd_tstate(n, a_ptrs, G, gA, lamB, lamA, dl, dlu, gy, st, B_ptr, C_ptr, gB_ptr, gC_ptr, b, t, mt, md, offs_t,
                L, san, sbb, sbn, sbl, scb, scn, scl, N: tl.constexpr):
    # One state index n of a block of _selective_scan_bwd_tkernel: returns the updated G, gA (column
    # n) and the Σ_n accumulators λ B_n, λ A_n (h_t − b_t); adds gB_n, gC_n atomically.
    sel = (offs_t == n)[None, :]
    first = (offs_t == 0)[None, :]
    # A[:, n] in log2 units, read from A (L1-resident) rather than reduced out of a register tile
    a2 = tl.load(a_ptrs + n * san, mask=md, other=0.0).to(tl.float32) * 1.4426950408889634  # (BD,)
    g_n = tl.sum(tl.where(sel, G, 0.0), axis=1)  # ∂L/∂h[:, n] after the block
    h_n = tl.load(st + n, mask=md, other=0.0)  # the state entering the block
    Bn = tl.load(B_ptr + b * sbb + n * sbn + t * sbl, mask=mt, other=0.0).to(tl.float32)
    Cn = tl.load(C_ptr + b * scb + n * scn + t * scl, mask=mt, other=0.0).to(tl.float32)
    dA = tl.exp2(dl * a2[:, None])
    bBn = dlu * Bn[None, :]
    aa, bb = tl.associative_scan((dA, bBn), 1, _combine)
    hs = aa * h_n[:, None] + bb  # h_t
    tl.atomic_add(gC_ptr + (b * N + n) * L + t, tl.sum(gy * hs, axis=0), mask=mt)
    _, q, p = tl.associative_scan((dA, tl.full(dA.shape, 1.0, tl.float32), gy * Cn[None, :]), 1, _combine_rev,
                                  reverse=True)
    lam = p + q * g_n[:, None]  # λ_t
    G = tl.where(sel, tl.sum(tl.where(first, dA * lam, 0.0), axis=1)[:, None], G)
    tl.atomic_add(gB_ptr + (b * N + n) * L + t, tl.sum(lam * dlu, axis=0), mask=mt)
    ha = lam * (hs - bBn)  # λ_t a_t h_{t-1}
    lamB += lam * Bn[None, :]
    lamA += ha * a2[:, None]
    gA = tl.where(sel, gA + tl.sum(ha * dl, axis=1)[:, None], gA)
    return G, gA, lamB, lamA


@triton.jit
def _selective_scan_bwd_tkernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, st_ptr, yp_ptr, go_ptr, gT_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    Dm, L, n_chunks,
    sub, sud, sul, sdb, sdd, sdl, sad, san, sbb, sbn, sbl, scb, scn, scl, szb, szd, szl,
    syb, syd, syl, sgb, sgd, sgl, sgub, sgud, sgul, sgdb, sgdd, sgdl, sgzb, sgzd, sgzl,
    N: tl.constexpr, TB: tl.constexpr, BD: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GT: tl.constexpr, BIG: tl.constexpr = False, UNROLL_N: tl.constexpr = False,
):
    """The backward in the time layout of ``_selective_scan_tkernel2``: a program owns ``BD``
    channels and walks the blocks of ``TB`` steps from the last to the first, (BD, TB) tiles with
    time along the lanes. Per block: gz and gy from the stored pre-gate y; then for each state
    index n in turn: the stored entry state h[:, n], the forward scan of (exp(Δ A_n), Δ u B_n) for
    h_t, the reverse scan (``_combine_rev``) of (exp(Δ A_n), 1, gy C_n) for λ with the carried
    G[:, n] = ∂L/∂h[:, n] after the block, and the per-n terms: λ B_n and λ A_n (h_t − b_t) summed
    over n in two (BD, TB) tiles (gu and gΔ after the loop), gA[:, n] summed over time, gB_n and
    gC_n summed over the block's channels and added atomically. G and gA live in columns 0..N-1 of
    (BD, TB) tiles (N <= TB), as the state does in the forward; A[:, n] is read per state (L1-resident;
    offline 5 % fewer instructions than reducing it out of such a tile, kernels/NOTES.md v8). The state
    loop (``_bwd_tstate`` per n) is a loop unless UNROLL_N: unrolled, the compiler kept the 16
    iterations' loads live and spilled (TIME_BWD_CONFIG's note)."""
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_t = tl.arange(0, TB)
    if BIG:  # an offset passes 2**31 elements: 64-bit indices (see dispatch.needs_int64)
        b = b.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_t = offs_t.to(tl.int64)
    md = offs_d < Dm
    mdn = md[:, None] & (offs_t < N)[None, :]
    a_ptrs = A_ptr + offs_d * sad  # A[d, n] = a_ptrs + n * san, read per state
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
        gD = tl.zeros((BD,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
        gbias = tl.zeros((BD,), dtype=tl.float32)
    else:
        bias = tl.zeros((BD,), dtype=tl.float32)  # unused (the block loads add no bias)
    hn_offs = offs_d[:, None] * N + offs_t[None, :]
    if HAS_GT:
        G = tl.load(gT_ptr + b * Dm * N + hn_offs, mask=mdn, other=0.0).to(tl.float32)
    else:
        G = tl.zeros((BD, TB), dtype=tl.float32)  # ∂L/∂h[:, n] after the current block, column n
    gA = tl.zeros((BD, TB), dtype=tl.float32)  # gA[:, n] in column n
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * TB + offs_t
        mt = t < L
        mdt = md[:, None] & mt[None, :]
        u, x, dl = _tblock_inputs(u_ptr, dl_ptr, b, offs_d, t, mdt, bias, sub, sud, sul, sdb, sdd, sdl,
                                  HAS_BIAS, SOFTPLUS)  # (BD, TB)
        dlu = dl * u
        gy = tl.load(go_ptr + b * sgb + offs_d[:, None] * sgd + t[None, :] * sgl, mask=mdt, other=0.0)
        gy = gy.to(tl.float32)  # ∂L/∂out, made ∂L/∂y below
        if HAS_Z:
            zz = tl.load(z_ptr + b * szb + offs_d[:, None] * szd + t[None, :] * szl, mask=mdt, other=0.0)
            zz = zz.to(tl.float32)
            yp = tl.load(yp_ptr + b * syb + offs_d[:, None] * syd + t[None, :] * syl, mask=mdt, other=0.0)
            sz = 1.0 / (1.0 + tl.exp(-zz))
            gz = gy * yp.to(tl.float32) * sz * (1.0 + zz * (1.0 - sz))
            tl.store(gz_ptr + b * sgzb + offs_d[:, None] * sgzd + t[None, :] * sgzl,
                     gz.to(gz_ptr.dtype.element_ty), mask=mdt)
            gy = gy * zz * sz
        if HAS_D:
            gD += tl.sum(gy * u, axis=1)
        lamB = tl.zeros((BD, TB), dtype=tl.float32)  # Σ_n λ B_n
        lamA = tl.zeros((BD, TB), dtype=tl.float32)  # Σ_n λ A_n (h_t − b_t), log2 units
        st = st_ptr + (b * n_chunks + c) * Dm * N + offs_d * N
        if UNROLL_N:  # the state loop unrolled (A's columns loop invariants; more registers)
            for n in tl.static_range(N):
                G, gA, lamB, lamA = _bwd_tstate(n, a_ptrs, G, gA, lamB, lamA, dl, dlu, gy, st, B_ptr, C_ptr, gB_ptr,
                                                gC_ptr, b, t, mt, md, offs_t, L, san, sbb, sbn, sbl, scb, scn, scl, N)
        else:
            for n in range(N):
                G, gA, lamB, lamA = _bwd_tstate(n, a_ptrs, G, gA, lamB, lamA, dl, dlu, gy, st, B_ptr, C_ptr, gB_ptr,
                                                gC_ptr, b, t, mt, md, offs_t, L, san, sbb, sbn, sbl, scb, scn, scl, N)
        gu = dl * lamB
        if HAS_D:
            gu += gy * Dv[:, None]
        gdl = u * lamB + lamA * 0.6931471805599453  # ∂L/∂Δ
        if SOFTPLUS:
            gdl = gdl / (1.0 + tl.exp(-x))  # softplus' = sigmoid
        gdl = tl.where(mdt, gdl, 0.0)
        if HAS_BIAS:
            gbias += tl.sum(gdl, axis=1)
        tl.store(gu_ptr + b * sgub + offs_d[:, None] * sgud + t[None, :] * sgul,
                 gu.to(gu_ptr.dtype.element_ty), mask=mdt)
        tl.store(gdl_ptr + b * sgdb + offs_d[:, None] * sgdd + t[None, :] * sgdl,
                 gdl.to(gdl_ptr.dtype.element_ty), mask=mdt)
    tl.store(gA_ptr + b * Dm * N + hn_offs, gA, mask=mdn)
    tl.store(gh0_ptr + b * Dm * N + hn_offs, G, mask=mdn)
    if HAS_D:
        tl.store(gD_ptr + b * Dm + offs_d, gD, mask=md)
    if HAS_BIAS:
        tl.store(gbias_ptr + b * Dm + offs_d, gbias, mask=md)


# The time backward's (steps per block TB, channels per program BD, warps, unrolled state loop); the
# training forward (time2 storing states) runs with the same TB; swept with kernels/scan_bwd_time.py.
# Compiled offline for sm_90 (Triton 3.9's ptxas): with the state loop
# unrolled every config spilled (~360 B of stack at TB 64, >1 KB at TB 128: the scheduler keeps the
# 16 iterations' loads and A columns live); as a loop, TB 64 with BD 16 / 4 warps or BD 32 / 8 warps
# fit in ~250 registers without spills, TB 128 still spills.
# The H200 sweep (kernels/results-h200-v7.md, run 3) made TB 128 / BD 16 / 4 warps / loop the fastest
# of 2-8 warps despite its offline spill: 11.2 ms at 16k and 45.0 ms at 64k (TB 64 / BD 16: 13.1 / 52.1).
# Session 7 (results-h200-v8.md, run 1) swept one-warp programs, whose channel reductions for gB / gC
# stay in one warp (no block barriers): TB 128 / BD 4 / 1 warp 6.85 / 27.3 ms (offline: 255 registers,
# 208 B stack, 59.6 instructions per element against 68), TB 128 / BD 2 / 1 warp 42.6 ms at 64k,
# TB 64 / BD 4 / 1 warp 42.2, TB 32 / BD 8 / 1 warp 75.9.
TIME_BWD_CONFIG = (128, 4, 1, False)


def selective_scan_bwd_time(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, states: torch.Tensor, ypre: torch.Tensor | None,
    gy: torch.Tensor | None, gfinal: torch.Tensor | None, delta_softplus: bool = True,
    chunk: int | None = None, block_d: int | None = None, num_warps: int | None = None,
    unroll_n: bool | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) through the time-layout
    backward ``_selective_scan_bwd_tkernel``, as :func:`selective_scan_bwd` returns them.
    ``states``: (B, chunks, D, N) fp32 and ``ypre`` (with z: the pre-gate y, (B, D, L), laid out
    as the forward's y) from ``selective_scan_fwd(..., variant="time2", store_states=True,
    ypre=...)`` run with the same ``chunk``; gy: (B, D, L) (None: zero), gfinal: (B, D, N)
    (None: zero). chunk / block_d / num_warps / unroll_n (the state loop as ``tl.static_range``
    rather than a loop) default to ``TIME_BWD_CONFIG``."""
    batch, Dm, L = u.shape
    N = A.shape[1]
    d_chunk, d_bd, d_nw, d_unroll = TIME_BWD_CONFIG
    unroll_n = d_unroll if unroll_n is None else unroll_n
    chunk = max(chunk or d_chunk, triton.next_power_of_2(N))  # A, G, gA in the first N columns
    block_d = min(block_d or d_bd, triton.next_power_of_2(Dm))
    num_warps = num_warps or d_nw
    n_chunks = states.shape[1]
    assert n_chunks == max(1, triton.cdiv(L, chunk)), "states were stored with another chunk"
    if z is not None:
        assert ypre is not None and ypre.shape == u.shape, "the time backward needs the pre-gate y"
    gy, gT, (gu, gdl, gz, gB, gC, gA, gD, gbias, gh0) = _grad_buffers(u, delta, A, D, z, delta_bias, gy, gfinal)
    zt = z if z is not None else u
    yp = ypre if ypre is not None else u
    gzt = gz if gz is not None else gu
    grid = (batch, triton.cdiv(Dm, block_d))
    _selective_scan_bwd_tkernel[grid](
        u, delta, A, B, C, D if D is not None else A, zt, delta_bias if delta_bias is not None else A,
        states, yp, gy, gT if gT is not None else gh0,
        gu, gdl, gzt, gB, gC, gA, gD if gD is not None else gA, gbias if gbias is not None else gA, gh0,
        Dm, L, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zt.stride(), *yp.stride(),
        *gy.stride(), *gu.stride(), *gdl.stride(), *gzt.stride(),
        N=N, TB=chunk, BD=block_d,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_GT=gT is not None, num_warps=num_warps, UNROLL_N=unroll_n,
        BIG=needs_int64(u, delta, B, C, zt, yp, gy, gu, gdl, gzt, states),
    )
    return _grads_out((gu, gdl, gz, gB, gC, gA, gD, gbias, gh0), A, B, C, D, delta_bias, initial_state)
