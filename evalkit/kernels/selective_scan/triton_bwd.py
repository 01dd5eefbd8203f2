"""Triton selective scan (Mamba-1) backward: one kernel, no stored per-step states.

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

One program per (batch, block of channels) walks the chunks of ``T`` steps from the last to the
first. Per chunk it reloads the inputs, recomputes the chunk's states from the state the forward
stored at the chunk's entry (one forward scan, as in the forward kernel), then runs the reverse
scan for λ. The reverse recurrence's coefficient a_{t+1} belongs to the *next* step; instead of
shifting a tile, the scan carries it: a segment [i, j] is summarised by (a_i, Q, P) with
λ_i = P + Q · a_{j+1} λ_{j+1}, which is associative (see ``_combine_rev``). The carry between chunks
is G = a_first λ_first, ∂L/∂(state before the chunk).

B and C are shared by all channels: their gradients are sums over channel blocks, added with
atomics into fp32 buffers (order-dependent rounding, as in mamba_ssm's CUDA backward). A, D and the
bias get per-batch fp32 partials, summed here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64
from evalkit.kernels.selective_scan.triton import _combine, _softplus

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
    dev = u.device
    f32 = dict(device=dev, dtype=torch.float32)
    if gy is None:
        gy = torch.zeros(batch, Dm, L, device=dev, dtype=u.dtype)
    gu = torch.empty(batch, Dm, L, device=dev, dtype=u.dtype)
    gdl = torch.empty(batch, Dm, L, device=dev, dtype=delta.dtype)
    gz = torch.empty(batch, Dm, L, device=dev, dtype=z.dtype) if z is not None else None
    gB = torch.zeros(batch, N, L, **f32)
    gC = torch.zeros(batch, N, L, **f32)
    gA = torch.empty(batch, Dm, N, **f32)
    gD = torch.empty(batch, Dm, **f32) if D is not None else None
    gbias = torch.empty(batch, Dm, **f32) if delta_bias is not None else None
    gh0 = torch.empty(batch, Dm, N, **f32)
    gT = gfinal.to(torch.float32).contiguous() if gfinal is not None else None
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
    return (
        gu, gdl, gA.sum(0).to(A.dtype), gB.to(B.dtype), gC.to(C.dtype),
        gD.sum(0).to(D.dtype) if D is not None else None, gz,
        gbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
        gh0.to(initial_state.dtype) if initial_state is not None else None,
    )
