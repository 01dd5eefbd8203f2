"""Triton gated delta rule (Gated DeltaNet) forward: three kernels, fp32 accumulation, any L,
bf16 / fp16 / fp32 inputs. Same semantics and shapes as
:func:`evalkit.kernels.gated_delta.ref.gated_delta_ref` (q, k: (B, L, H, N); v: (B, L, H, P);
g, beta: (B, L, H); initial_state: (B, H, P, N)); the notation is ref.py's.

Per (batch, head) and chunk of C steps, with gc the chunk-local cumulative log decay (Γ = e^gc):

1. ``_gdn_prep_kernel`` — one program per (chunk, batch·head), all independent: the UT transform.
   A = strict_lower(diag(β) (K Kᵀ) ∘ e^{gc_t − gc_s}), T = (I + A)⁻¹ by forward substitution in
   registers (C steps, one row each), then W_k = T diag(βΓ) K and W_v = T diag(β) V on the tensor
   cores. W_v goes into the buffer that later holds U; T is kept only for the backward.
2. ``_gdn_state_kernel`` — one program per (batch·head, P-block) walks the chunks in order with
   its (P-block, N) state S in registers (fp32): stores S entering the chunk, U = W_v − W_k Sᵀ
   (the delta-rule correction of every step against the entering state), and
   S ← Γ_C S + Uᵀ diag(Γ_C / Γ) K. Two dots per chunk.
3. ``_gdn_out_kernel`` — one program per (chunk, batch·head, P-block), all independent:
   O = diag(Γ) Q Sᵀ + ((Q Kᵀ) ∘ e^{gc_t − gc_s}, s ≤ t) U.

Internal buffers are chunk-major per (batch, head), padded to whole chunks: W_k (B·H, nc·C, N),
U (B·H, nc·C, P), T (B·H, nc·C, C) fp32, states (B·H, nc, P, N). Padded steps have β = 0, g = 0 and
zero k, v, so they leave the state unchanged and produce zero rows. Backward: ``triton_bwd.py``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _chunk_decay(g_ptr, b, h, c, L, sgb, sgl, sgh, C: tl.constexpr, BIG: tl.constexpr = False):
    """(gc, gl, mask): chunk-local cumulative log decay (C,), its total, the valid steps."""
    t = c * C + tl.arange(0, C)
    if BIG:
        t = t.to(tl.int64)
    mt = t < L
    g = tl.load(g_ptr + b * sgb + h * sgh + t * sgl, mask=mt, other=0.0).to(tl.float32)
    gc = tl.cumsum(g, 0)
    return gc, tl.sum(g, 0), mt


@triton.jit
def _unit_lower_inverse(A, C: tl.constexpr):
    """(I + A)⁻¹ for a strictly lower-triangular (C, C) fp32 tile, by forward substitution:
    row i of T = e_i − Σ_{j<i} A_ij T_j. Built as X = Tᵀ (column i of X = row i of T) so that
    extracting row i of A (a reduction over rows) and contracting it with X (over columns) need
    no layout change between them."""
    offs = tl.arange(0, C)
    rows = offs[:, None]
    cols = offs[None, :]
    X = tl.where(rows == cols, 1.0, 0.0)
    for i in range(1, C):
        a = tl.sum(tl.where(rows == i, A, 0.0), axis=0)  # row i of A, indexed by column j
        x = tl.sum(X * a[None, :], axis=1)  # Σ_j A_ij T_j, indexed by T's column
        X = tl.where(cols == i, tl.where(offs == i, 1.0, 0.0)[:, None] - x[:, None], X)
    return tl.trans(X)


@triton.jit
def _gdn_prep_kernel(
    k_ptr, v_ptr, g_ptr, b_ptr, wk_ptr, u_ptr, T_ptr,
    L, H, N, P, n_chunks,
    skb, skl, skh, skn, svb, svl, svh, svp, sgb, sgl, sgh, sbb, sbl, sbh,
    C: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
    STORE_T: tl.constexpr, PREC: tl.constexpr, PREC_T: tl.constexpr, BIG: tl.constexpr = False,
):
    c = tl.program_id(0)
    if BIG:
        c = c.to(tl.int64)
    pid_bh = tl.program_id(1)
    if BIG:  # an offset reaches 2**31 elements: 64-bit indices
        pid_bh = pid_bh.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = tl.arange(0, C)
    if BIG:
        offs_t = offs_t.to(tl.int64)
    offs_n = tl.arange(0, BN)
    t = c * C + offs_t
    gc, _, mt = _chunk_decay(g_ptr, b, h, c, L, sgb, sgl, sgh, C, BIG)
    beta = tl.load(b_ptr + b * sbb + h * sbh + t * sbl, mask=mt, other=0.0).to(tl.float32)
    mn = offs_n < N
    k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skl + offs_n[None, :] * skn,
                mask=mt[:, None] & mn[None, :], other=0.0)  # (C, BN)
    kk = tl.dot(k, tl.trans(k), input_precision=PREC)  # (C, C)
    strict = offs_t[:, None] > offs_t[None, :]
    A = tl.where(strict, kk * beta[:, None] * tl.exp(tl.where(strict, gc[:, None] - gc[None, :], float("-inf"))), 0.0)
    T = _unit_lower_inverse(A, C)  # (C, C) fp32
    row = pid_bh * n_chunks * C + c * C + offs_t  # chunk-major row of the internal buffers
    if STORE_T:
        tl.store(T_ptr + row[:, None] * C + offs_t[None, :], T)
    kb = k.to(tl.float32) * (beta * tl.exp(gc))[:, None]
    wk = tl.dot(T, kb, input_precision=PREC_T)  # (C, BN) W_k = T diag(βΓ) K
    tl.store(wk_ptr + row[:, None] * N + offs_n[None, :], wk.to(wk_ptr.dtype.element_ty), mask=mn[None, :])
    for p0 in range(0, P, BP):
        offs_p = p0 + tl.arange(0, BP)
        mp = offs_p < P
        v = tl.load(v_ptr + b * svb + h * svh + t[:, None] * svl + offs_p[None, :] * svp,
                    mask=mt[:, None] & mp[None, :], other=0.0)  # (C, BP)
        wv = tl.dot(T, v.to(tl.float32) * beta[:, None], input_precision=PREC_T)  # W_v = T diag(β) V
        tl.store(u_ptr + row[:, None] * P + offs_p[None, :], wv.to(u_ptr.dtype.element_ty), mask=mp[None, :])


@triton.jit
def _gdn_state_kernel(
    k_ptr, g_ptr, wk_ptr, u_ptr, h0_ptr, st_ptr, hT_ptr,
    L, H, N, P, n_chunks,
    skb, skl, skh, skn, sgb, sgl, sgh,
    C: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
    HAS_H0: tl.constexpr, PREC: tl.constexpr, BIG: tl.constexpr = False,
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
    if HAS_H0:
        S = tl.load(h0_ptr + pid_bh * P * N + pn, mask=mpn, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BP, BN), dtype=tl.float32)
    for c in range(n_chunks):
        tl.store(st_ptr + (pid_bh * n_chunks + c) * P * N + pn, S.to(st_ptr.dtype.element_ty), mask=mpn)
        gc, gl, mt = _chunk_decay(g_ptr, b, h, c, L, sgb, sgl, sgh, C, BIG)
        t = c * C + offs_t
        row = pid_bh * n_chunks * C + t
        wk = tl.load(wk_ptr + row[:, None] * N + offs_n[None, :], mask=mn[None, :], other=0.0)  # (C, BN)
        wv = tl.load(u_ptr + row[:, None] * P + offs_p[None, :], mask=mp[None, :], other=0.0)  # (C, BP)
        u = wv.to(tl.float32) - tl.dot(wk, tl.trans(S.to(wk.dtype)), input_precision=PREC)  # (C, BP)
        u = u.to(u_ptr.dtype.element_ty)
        tl.store(u_ptr + row[:, None] * P + offs_p[None, :], u, mask=mp[None, :])
        k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skl + offs_n[None, :] * skn,
                    mask=mt[:, None] & mn[None, :], other=0.0)  # (C, BN)
        kd = (k.to(tl.float32) * tl.exp(gl - gc)[:, None]).to(k.dtype)  # (Γ_C / Γ_s) k_s
        S = S * tl.exp(gl) + tl.dot(tl.trans(u.to(k.dtype)), kd, input_precision=PREC)  # (BP, BN)
    tl.store(hT_ptr + pid_bh * P * N + pn, S, mask=mpn)


@triton.jit
def _gdn_out_kernel(
    q_ptr, k_ptr, g_ptr, u_ptr, st_ptr, o_ptr,
    L, H, N, P, n_chunks,
    sqb, sql, sqh, sqn, skb, skl, skh, skn, sgb, sgl, sgh, sob, sol, soh, sop,
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
    k = k.to(q.dtype)
    incl = offs_t[:, None] >= offs_t[None, :]
    qk = tl.dot(q, tl.trans(k), input_precision=PREC)  # (C, C)
    aqk = qk * tl.exp(tl.where(incl, gc[:, None] - gc[None, :], float("-inf")))
    row = pid_bh * n_chunks * C + t
    u = tl.load(u_ptr + row[:, None] * P + offs_p[None, :], mask=mp[None, :], other=0.0)  # (C, BP)
    s = tl.load(st_ptr + (pid_bh * n_chunks + c) * P * N + offs_p[None, :] * N + offs_n[:, None],
                mask=mp[None, :] & mn[:, None], other=0.0)  # (BN, BP): entering state, transposed
    o = tl.dot(q, s.to(q.dtype), input_precision=PREC) * tl.exp(gc)[:, None]
    o += tl.dot(aqk.to(u.dtype), u, input_precision=PREC)
    tl.store(o_ptr + b * sob + h * soh + t[:, None] * sol + offs_p[None, :] * sop,
             o.to(o_ptr.dtype.element_ty), mask=mt[:, None] & mp[None, :])


def _pow2(n: int, lo: int = 32) -> int:
    # Blocks of at least 32: with 16-wide dot blocks the SSD output kernel returned NaN on the
    # H100 (Triton 3.6; right under the interpreter) — see kernels/NOTES.md.
    return max(lo, triton.next_power_of_2(n))


def kernel_chunk_size(chunk_size: int) -> int:
    """The chunk the kernels use: 32 for callers asking ≤ 32, else 64 (the chunk changes
    rounding only, not the result; the forward substitution costs C steps per chunk)."""
    return 32 if chunk_size <= 32 else 64


def precisions(dtype: torch.dtype) -> tuple[str, str]:
    """(dots on the inputs, dots with the fp32 UT inverse T): exact fp32 for fp32 inputs (the
    GPU would otherwise round to TF32); 16-bit inputs use tensor cores, TF32 for T's products."""
    return ("ieee", "ieee") if dtype == torch.float32 else ("tf32", "tf32")


def gdn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    chunk_size: int, initial_state: torch.Tensor | None = None, keep_for_backward: bool = False,
    block_p: int | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Forward only (no autograd). Returns o (B, L, H, P) in v's dtype and the final state
    (B, H, P, N) fp32; with ``keep_for_backward`` also (W_k, U, T, states) for triton_bwd.py.
    ``chunk_size`` must be 32 or 64. ``block_p`` / ``num_warps``: tuning knobs for the bench."""
    batch, L, H, N = k.shape
    P = v.shape[-1]
    C = chunk_size
    n_chunks = max(1, triton.cdiv(L, C))
    dt = v.dtype
    if q.dtype != dt:
        q = q.to(dt)
    if k.dtype != dt:
        k = k.to(dt)
    prec, prec_t = precisions(dt)
    dev = v.device
    BN = _pow2(N)
    BP_full = min(_pow2(P), 64)
    BP = block_p or (32 if P <= 64 else 64)
    stages = 1 if _INTERPRET else 2
    warps = num_warps or (4 if BN <= 64 else 8)

    wk = torch.empty(batch * H, n_chunks * C, N, device=dev, dtype=dt)
    u = torch.empty(batch * H, n_chunks * C, P, device=dev, dtype=dt)
    T = torch.empty(batch * H, n_chunks * C, C, device=dev, dtype=torch.float32) if keep_for_backward else wk
    states = torch.empty(batch * H, n_chunks, P, N, device=dev, dtype=dt)
    big = needs_int64(q, k, v, g, wk, u, T, states)  # 64-bit indices past 2**31 elements
    _gdn_prep_kernel[(n_chunks, batch * H)](
        k, v, g, beta, wk, u, T, L, H, N, P, n_chunks,
        *k.stride(), *v.stride(), *g.stride(), *beta.stride(),
        C=C, BN=BN, BP=BP_full, STORE_T=keep_for_backward, PREC=prec, BIG=big, PREC_T=prec_t,
        num_warps=warps, num_stages=stages,
    )
    final = torch.empty(batch, H, P, N, device=dev, dtype=torch.float32)
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else final
    _gdn_state_kernel[(batch * H, triton.cdiv(P, BP))](
        k, g, wk, u, h0, states, final, L, H, N, P, n_chunks,
        *k.stride(), *g.stride(),
        C=C, BN=BN, BP=BP, HAS_H0=initial_state is not None, PREC=prec, BIG=big,
        num_warps=warps, num_stages=stages,
    )
    o = torch.empty(batch, L, H, P, device=dev, dtype=dt)
    _gdn_out_kernel[(n_chunks, batch * H, triton.cdiv(P, BP_full))](
        q, k, g, u, states, o, L, H, N, P, n_chunks,
        *q.stride(), *k.stride(), *g.stride(), *o.stride(),
        C=C, BN=BN, BP=BP_full, PREC=prec, BIG=big, num_warps=warps, num_stages=stages,
    )
    if keep_for_backward:
        return o, final, (wk, u, T, states)
    return o, final


class _GDNFn(torch.autograd.Function):
    """Triton forward (keeping W_k, U, T and the chunk-entry states) and Triton backward."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, chunk_size):  # type: ignore[override]
        o, final, kept = gdn_fwd(q, k, v, g, beta, chunk_size, initial_state=initial_state,
                                 keep_for_backward=True)
        ctx.save_for_backward(q, k, v, g, beta, initial_state, *kept)
        ctx.chunk_size = chunk_size
        return o, final

    @staticmethod
    def backward(ctx, go, gfinal):  # type: ignore[override]
        from evalkit.kernels.gated_delta.triton_bwd import gdn_bwd

        q, k, v, g, beta, h0, wk, u, T, states = ctx.saved_tensors
        grads = gdn_bwd(q, k, v, g, beta, h0, wk, u, T, states, go, gfinal, ctx.chunk_size)
        return (*grads, None)


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    chunk_size: int, initial_state: torch.Tensor | None = None, return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton gated delta rule with the semantics of :func:`gated_delta_ref`; differentiable
    (Triton backward). The final state is float32."""
    C = kernel_chunk_size(chunk_size)
    if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state)):
        o, final = gdn_fwd(q, k, v, g, beta, C, initial_state=initial_state)
    else:
        o, final = _GDNFn.apply(q, k, v, g, beta, initial_state, C)
    return (o, final) if return_final_state else o
