"""Triton gated delta rule backward: three kernels, fp32 accumulation. Uses what the forward
(``triton.py``) kept: W_k, U, the UT inverse T and the states entering each chunk.

Per chunk (notation of ref.py; E_ts = e^{gc_t − gc_s}; Kd = diag(Γ_C / Γ) K; Kb = diag(βΓ) K;
Vb = diag(β) V; Aqk = (Q Kᵀ) ∘ E on s ≤ t), the forward is

    U = T Vb − T Kb S0ᵀ          O = diag(Γ) Q S0ᵀ + Aqk U          S1 = Γ_C S0 + Uᵀ Kd

1. ``_gdn_bwd_local_kernel`` — per (chunk, batch·head, P-block), independent: dU ← Aqkᵀ dO.
2. ``_gdn_bwd_state_kernel`` — per (batch·head, P-block), backwards over the chunks with
   dS = ∂L/∂S1 in registers (fp32): stores dS for the chunk, completes dU += Kd dSᵀ, and passes
   dS0 = Γ_C dS1 + (diag(Γ) dO)ᵀ Q − dUᵀ W_k to the previous chunk; the last one is ∂L/∂S_0.
3. ``_gdn_bwd_chunk_kernel`` — per (chunk, batch·head), independent: with dW_k = −dU S0 and
   dT = dU Vbᵀ + dW_k Kbᵀ, the UT transform's gradient dA = −Tᵀ dT Tᵀ (strictly lower),
   dVb = Tᵀ dU, dKb = Tᵀ dW_k, and
     dQ = diag(Γ) dO S0 + (dAqk ∘ E) K,        dAqk = dO Uᵀ (s ≤ t)
     dK = (dAqk ∘ E)ᵀ Q + diag(Γ_C/Γ) U dS1 + diag(βΓ) dKb + (G + Gᵀ) K,   G = diag(β) dA ∘ E
     dV = diag(β) dVb,   dβ = rows of dVb ∘ V + Γ ∘ rows of dKb ∘ K + rows of dA ∘ E ∘ K Kᵀ
   and the decay gradient: ∂/∂gc_t from every place gc appears (E's rows minus columns in A and
   Aqk, Γ in the entering-state read and in Kb, Γ_C / Γ in Kd, Γ_C in the state carry), turned
   into ∂g by a reverse cumulative sum within the chunk.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64
from evalkit.kernels.gated_delta.triton import _chunk_decay, _pow2, precisions

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _gdn_bwd_local_kernel(
    q_ptr, k_ptr, g_ptr, gy_ptr, du_ptr,
    L, H, N, P, n_chunks,
    sqb, sql, sqh, sqn, skb, skl, skh, skn, sgb, sgl, sgh, syb, syl, syh, syp,
    C: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, PREC: tl.constexpr, BIG: tl.constexpr = False,
):
    c = tl.program_id(0)
    if BIG:
        c = c.to(tl.int64)
    pid_bh = tl.program_id(1)
    if BIG:  # an offset reaches 2**31 elements: 64-bit indices
        pid_bh = pid_bh.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_p = tl.program_id(2) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, C)
    if BIG:
        offs_t = offs_t.to(tl.int64)
    t = c * C + offs_t
    mp, mn = offs_p < P, offs_n < N
    gc, _, mt = _chunk_decay(g_ptr, b, h, c, L, sgb, sgl, sgh, C, BIG)
    mtn = mt[:, None] & mn[None, :]
    q = tl.load(q_ptr + b * sqb + h * sqh + t[:, None] * sql + offs_n[None, :] * sqn, mask=mtn, other=0.0)
    k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skl + offs_n[None, :] * skn, mask=mtn, other=0.0)
    incl = offs_t[:, None] >= offs_t[None, :]
    aqk = tl.dot(q, tl.trans(k), input_precision=PREC) * tl.exp(
        tl.where(incl, gc[:, None] - gc[None, :], float("-inf")))  # (C, C)
    gy = tl.load(gy_ptr + b * syb + h * syh + t[:, None] * syl + offs_p[None, :] * syp,
                 mask=mt[:, None] & mp[None, :], other=0.0).to(q.dtype)  # (C, BP)
    du = tl.dot(tl.trans(aqk.to(q.dtype)), gy, input_precision=PREC)
    row = pid_bh * n_chunks * C + t
    tl.store(du_ptr + row[:, None] * P + offs_p[None, :], du, mask=mp[None, :])


@triton.jit
def _gdn_bwd_state_kernel(
    q_ptr, k_ptr, g_ptr, wk_ptr, gy_ptr, gT_ptr, du_ptr, dst_ptr, gh0_ptr,
    L, H, N, P, n_chunks,
    sqb, sql, sqh, sqn, skb, skl, skh, skn, sgb, sgl, sgh, syb, syl, syh, syp,
    C: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, HAS_GT: tl.constexpr, PREC: tl.constexpr,
    BIG: tl.constexpr = False,
):
    pid_bh = tl.program_id(0)
    if BIG:  # an offset reaches 2**31 elements: 64-bit indices
        pid_bh = pid_bh.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, C)
    if BIG:
        offs_t = offs_t.to(tl.int64)
    mp, mn = offs_p < P, offs_n < N
    pn = offs_p[:, None] * N + offs_n[None, :]
    mpn = mp[:, None] & mn[None, :]
    if HAS_GT:
        dS = tl.load(gT_ptr + pid_bh * P * N + pn, mask=mpn, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros((BP, BN), dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        tl.store(dst_ptr + (pid_bh * n_chunks + c) * P * N + pn, dS, mask=mpn)  # ∂L/∂(state after c)
        gc, gl, mt = _chunk_decay(g_ptr, b, h, c, L, sgb, sgl, sgh, C, BIG)
        t = c * C + offs_t
        mtn = mt[:, None] & mn[None, :]
        row = pid_bh * n_chunks * C + t
        k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skl + offs_n[None, :] * skn, mask=mtn, other=0.0)
        kd = (k.to(tl.float32) * tl.exp(gl - gc)[:, None]).to(k.dtype)
        du = tl.load(du_ptr + row[:, None] * P + offs_p[None, :], mask=mp[None, :], other=0.0)  # (C, BP)
        du += tl.dot(kd, tl.trans(dS.to(k.dtype)), input_precision=PREC)
        tl.store(du_ptr + row[:, None] * P + offs_p[None, :], du, mask=mp[None, :])
        q = tl.load(q_ptr + b * sqb + h * sqh + t[:, None] * sql + offs_n[None, :] * sqn, mask=mtn, other=0.0)
        gy = tl.load(gy_ptr + b * syb + h * syh + t[:, None] * syl + offs_p[None, :] * syp,
                     mask=mt[:, None] & mp[None, :], other=0.0).to(tl.float32)
        gyw = (gy * tl.exp(gc)[:, None]).to(q.dtype)
        wk = tl.load(wk_ptr + row[:, None] * N + offs_n[None, :], mask=mn[None, :], other=0.0)  # (C, BN)
        dS = dS * tl.exp(gl) + tl.dot(tl.trans(gyw), q, input_precision=PREC) \
            - tl.dot(tl.trans(du.to(wk.dtype)), wk, input_precision=PREC)
    tl.store(gh0_ptr + pid_bh * P * N + pn, dS, mask=mpn)


@triton.jit
def _gdn_bwd_chunk_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, b_ptr, T_ptr, u_ptr, st_ptr, dst_ptr, du_ptr, gy_ptr,
    gq_ptr, gk_ptr, gv_ptr, gg_ptr, gb_ptr,
    L, H, N, P, n_chunks,
    sqb, sql, sqh, sqn, skb, skl, skh, skn, svb, svl, svh, svp, sgb, sgl, sgh, sbb, sbl, sbh,
    syb, syl, syh, syp, sxb, sxl, sxh, sxn, swb, swl, swh, swp, szb, szl, szh,
    C: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, PREC: tl.constexpr, PREC_T: tl.constexpr,
    BIG: tl.constexpr = False,
):
    # gradients: gq, gk contiguous with strides sx*; gv with sw*; gg, gbeta with sz*
    c = tl.program_id(0)
    if BIG:
        c = c.to(tl.int64)
    pid_bh = tl.program_id(1)
    if BIG:  # an offset reaches 2**31 elements: 64-bit indices
        pid_bh = pid_bh.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, C)
    if BIG:
        offs_t = offs_t.to(tl.int64)
    t = c * C + offs_t
    mn = offs_n < N
    gc, gl, mt = _chunk_decay(g_ptr, b, h, c, L, sgb, sgl, sgh, C, BIG)
    mtn = mt[:, None] & mn[None, :]
    beta = tl.load(b_ptr + b * sbb + h * sbh + t * sbl, mask=mt, other=0.0).to(tl.float32)
    eg = tl.exp(gc)
    incl = offs_t[:, None] >= offs_t[None, :]
    strict = offs_t[:, None] > offs_t[None, :]
    E = tl.exp(tl.where(incl, gc[:, None] - gc[None, :], float("-inf")))  # (C, C), zero above
    q = tl.load(q_ptr + b * sqb + h * sqh + t[:, None] * sql + offs_n[None, :] * sqn, mask=mtn, other=0.0)
    k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skl + offs_n[None, :] * skn, mask=mtn, other=0.0)
    row = pid_bh * n_chunks * C + t
    T = tl.load(T_ptr + row[:, None] * C + offs_t[None, :])  # (C, C) fp32
    st_base = (pid_bh * n_chunks + c) * P * N

    daqk = tl.zeros((C, C), dtype=tl.float32)
    dT = tl.zeros((C, C), dtype=tl.float32)
    dqd = tl.zeros((C, BN), dtype=tl.float32)  # dO S0
    dkd = tl.zeros((C, BN), dtype=tl.float32)  # U dS1
    dwk = tl.zeros((C, BN), dtype=tl.float32)  # −dU S0
    dbeta = tl.zeros((C,), dtype=tl.float32)
    carry = tl.zeros((BN,), dtype=tl.float32)  # <dS1, S0>, partial over N
    for p0 in range(0, P, BP):
        offs_p = p0 + tl.arange(0, BP)
        mp = offs_p < P
        mtp = mt[:, None] & mp[None, :]
        mpn = mp[:, None] & mn[None, :]
        gy = tl.load(gy_ptr + b * syb + h * syh + t[:, None] * syl + offs_p[None, :] * syp,
                     mask=mtp, other=0.0).to(q.dtype)  # (C, BP)
        u = tl.load(u_ptr + row[:, None] * P + offs_p[None, :], mask=mp[None, :], other=0.0)  # (C, BP)
        du = tl.load(du_ptr + row[:, None] * P + offs_p[None, :], mask=mp[None, :], other=0.0)  # fp32
        v = tl.load(v_ptr + b * svb + h * svh + t[:, None] * svl + offs_p[None, :] * svp,
                    mask=mtp, other=0.0).to(tl.float32)
        s0 = tl.load(st_ptr + st_base + offs_p[:, None] * N + offs_n[None, :], mask=mpn, other=0.0)  # (BP, BN)
        ds1 = tl.load(dst_ptr + st_base + offs_p[:, None] * N + offs_n[None, :], mask=mpn, other=0.0)
        du_c = du.to(q.dtype)
        daqk += tl.dot(gy, tl.trans(u.to(q.dtype)), input_precision=PREC)
        dqd += tl.dot(gy, s0.to(q.dtype), input_precision=PREC)
        dkd += tl.dot(u.to(q.dtype), ds1.to(q.dtype), input_precision=PREC)
        dwk -= tl.dot(du_c, s0.to(q.dtype), input_precision=PREC)
        dT += tl.dot(du, tl.trans(v * beta[:, None]), input_precision=PREC_T)
        dvb = tl.dot(tl.trans(T), du, input_precision=PREC_T)  # (C, BP) Tᵀ dU
        tl.store(gv_ptr + b * swb + h * swh + t[:, None] * swl + offs_p[None, :] * swp,
                 (dvb * beta[:, None]).to(gv_ptr.dtype.element_ty), mask=mtp)
        dbeta += tl.sum(dvb * v, axis=1)
        carry += tl.sum(ds1 * s0.to(tl.float32), axis=0)

    kf = k.to(tl.float32)
    qf = q.to(tl.float32)
    kb = kf * (beta * eg)[:, None]
    dT += tl.dot(dwk, tl.trans(kb), input_precision=PREC_T)
    dkb = tl.dot(tl.trans(T), dwk, input_precision=PREC_T)  # (C, BN)
    dA = -tl.dot(tl.trans(T), tl.dot(dT, tl.trans(T), input_precision=PREC_T), input_precision=PREC_T)
    dA = tl.where(strict, dA, 0.0)
    kk = tl.dot(k, tl.trans(k), input_precision=PREC)  # (C, C)
    qk = tl.dot(q, tl.trans(k), input_precision=PREC)
    G = dA * E  # strictly lower: ∂L/∂(β_t k_t·k_s)
    GB = G * beta[:, None]  # ∂L/∂(k_t·k_s) through A
    dqk = tl.where(incl, daqk * E, 0.0)  # ∂L/∂(q_t·k_s) through Aqk
    dq = dqd * eg[:, None] + tl.dot(dqk.to(k.dtype), k, input_precision=PREC)
    wd = tl.exp(gl - gc)
    dk = tl.dot(tl.trans(dqk).to(q.dtype), q, input_precision=PREC) + dkd * wd[:, None] \
        + dkb * (beta * eg)[:, None] + tl.dot((GB + tl.trans(GB)).to(k.dtype), k, input_precision=PREC)
    dbeta += eg * tl.sum(dkb * kf, axis=1) + tl.sum(G * kk, axis=1)

    # ∂L/∂gc_t, then ∂g_r = Σ_{t ≥ r} ∂gc_t
    Z = dqk * qk  # Aqk's (t, s) terms: + row t, − column s
    Y = GB * kk  # A's
    dgc = tl.sum(Z + Y, axis=1) - tl.sum(Z + Y, axis=0)
    dgc += tl.sum(dqd * qf, axis=1) * eg + tl.sum(dkb * kb, axis=1)
    kdt = tl.sum(dkd * kf, axis=1) * wd  # Kd's terms: − at s, + at the chunk end
    dgc -= kdt
    end = tl.sum(kdt, axis=0) + tl.exp(gl) * tl.sum(carry, axis=0)
    dgc += tl.where(offs_t == C - 1, end, 0.0)
    dg = tl.cumsum(dgc, 0, reverse=True)

    xo = b * sxb + h * sxh + t[:, None] * sxl + offs_n[None, :] * sxn
    tl.store(gq_ptr + xo, dq.to(gq_ptr.dtype.element_ty), mask=mtn)
    tl.store(gk_ptr + xo, dk.to(gk_ptr.dtype.element_ty), mask=mtn)
    zo = b * szb + h * szh + t * szl
    tl.store(gb_ptr + zo, dbeta.to(gb_ptr.dtype.element_ty), mask=mt)
    tl.store(gg_ptr + zo, dg.to(gg_ptr.dtype.element_ty), mask=mt)


def gdn_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    initial_state: torch.Tensor | None, wk: torch.Tensor, u: torch.Tensor, T: torch.Tensor,
    states: torch.Tensor, go: torch.Tensor | None, gfinal: torch.Tensor | None, chunk_size: int,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (q, k, v, g, beta, initial_state), each in its input's dtype (None for an
    absent initial state). wk, u, T, states: what ``gdn_fwd(keep_for_backward=True)`` kept.
    go: (B, L, H, P) (None: zero); gfinal: (B, H, P, N) (None: zero)."""
    batch, L, H, N = k.shape
    P = v.shape[-1]
    C = chunk_size
    n_chunks = states.shape[1]
    dt = v.dtype
    dev = v.device
    qk_ = q if q.dtype == dt else q.to(dt)
    kk_ = k if k.dtype == dt else k.to(dt)
    prec, prec_t = precisions(dt)
    if go is None:
        go = torch.zeros(batch, L, H, P, device=dev, dtype=dt)
    BN = _pow2(N)
    BP_full = min(_pow2(P), 64)
    BP = 32 if P <= 64 else 64
    stages = 1 if _INTERPRET else 2
    warps = 4 if BN <= 64 else 8

    du = torch.empty(batch * H, n_chunks * C, P, device=dev, dtype=torch.float32)
    big = needs_int64(q, k, v, g, go, states, wk, u, T, du)  # 64-bit indices past 2**31 elements
    _gdn_bwd_local_kernel[(n_chunks, batch * H, triton.cdiv(P, BP_full))](
        qk_, kk_, g, go, du, L, H, N, P, n_chunks,
        *qk_.stride(), *kk_.stride(), *g.stride(), *go.stride(),
        C=C, BN=BN, BP=BP_full, PREC=prec, BIG=big, num_warps=warps, num_stages=stages,
    )
    dstates = torch.empty(batch * H, n_chunks, P, N, device=dev, dtype=torch.float32)
    gh0 = torch.empty(batch, H, P, N, device=dev, dtype=torch.float32)
    gT = gfinal.to(torch.float32).contiguous() if gfinal is not None else None
    _gdn_bwd_state_kernel[(batch * H, triton.cdiv(P, BP))](
        qk_, kk_, g, wk, go, gT if gT is not None else gh0, du, dstates, gh0, L, H, N, P, n_chunks,
        *qk_.stride(), *kk_.stride(), *g.stride(), *go.stride(),
        C=C, BN=BN, BP=BP, HAS_GT=gT is not None, PREC=prec, BIG=big, num_warps=warps, num_stages=stages,
    )
    gq = torch.empty(batch, L, H, N, device=dev, dtype=q.dtype)
    gk = torch.empty(batch, L, H, N, device=dev, dtype=k.dtype)
    gv = torch.empty(batch, L, H, P, device=dev, dtype=dt)
    gg = torch.empty(batch, L, H, device=dev, dtype=g.dtype)
    gb = torch.empty(batch, L, H, device=dev, dtype=beta.dtype)
    _gdn_bwd_chunk_kernel[(n_chunks, batch * H)](
        qk_, kk_, v, g, beta, T, u, states, dstates, du, go,
        gq, gk, gv, gg, gb, L, H, N, P, n_chunks,
        *qk_.stride(), *kk_.stride(), *v.stride(), *g.stride(), *beta.stride(), *go.stride(),
        *gq.stride(), *gv.stride(), *gg.stride(),
        # one stage and 32-wide P blocks at N = 128: two stages of (P-block, N) fp32 tiles
        # overflowed the H100's 227 KB of shared memory (fp32, N = 128, first GPU run)
        C=C, BN=BN, BP=BP_full if BN < 128 else 32, PREC=prec, BIG=big, PREC_T=prec_t, num_warps=warps, num_stages=1,
    )
    return gq, gk, gv, gg, gb, (gh0.to(initial_state.dtype) if initial_state is not None else None)
