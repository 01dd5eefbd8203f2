"""Triton SSD (Mamba-2) backward: two kernels, fp32 accumulation, bf16/fp16 tensor-core dots.

Per (batch, head) and chunk c of T steps, with a_t = Δ_t A, the chunk-local cumulative log decay
cs_t = a_1 + … + a_t (so the chunk total is cs_T), S_c the state entering the chunk and
X_s = Δ_s x_s, the forward (``triton.py``) is

    y_t = Σ_{s≤t} (C_t·B_s) e^{cs_t − cs_s} X_s + e^{cs_t} S_c C_t + D x_t
    S_{c+1} = e^{cs_T} S_c + Σ_s e^{cs_T − cs_s} X_s B_sᵀ.

1. ``_ssd_bwd_dstate_kernel`` — the state gradient, backwards over chunks (the mirror of the
   forward's state kernel): with R_c = ∂L/∂S_{c+1} (R of the last chunk = ∂L/∂final state),
   R_{c-1} = e^{cs_T} R_c + Σ_t e^{cs_t} gy_t C_tᵀ. Stores R_c for every chunk, and ∂L/∂S_0.
2. ``_ssd_bwd_chunk_kernel`` — one program per (batch, head, chunk), all independent: with
   M = (C Bᵀ) ∘ e^{cs_t − cs_s} (causal), Gm = gy xᵀ, w_s = e^{cs_T − cs_s}:
     gX = Mᵀ gy + (w ∘ B) Rᵀ;   gx = Δ gX + D gy;   gΔ (direct) = Σ_p gX x
     gB = (Gm ∘ M/CB ∘ Δ_s)ᵀ C + (w Δ) ∘ (x R);   gC = (Gm ∘ M/CB ∘ Δ_s) B + e^{cs} ∘ (gy S_c)
   and the gradient of each cs_t (the decays: intra-chunk rows minus columns, the entering-state
   term, the state-update term), turned into ∂a_t by a reverse cumsum, gives gΔ += A ∂a and
   gA = Σ Δ ∂a. B and C are shared by the heads of a group: per-head fp32 partials, summed here.

The states entering each chunk come from the forward (saved by ``_SSDFn``), not recomputed.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _ssd_bwd_dstate_kernel(
    gy_ptr, dt_ptr, A_ptr, C_ptr, gT_ptr, dst_ptr, gh0_ptr,
    L, H, P, N, heads_per_group, n_chunks,
    sgb, sgl, sgh, sgp, sdb, sdl, sdh, scb, scl, scg, scn,
    T: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_GT: tl.constexpr, PREC: tl.constexpr, BIG: tl.constexpr = False,
):
    pid_bh = tl.program_id(0)
    if BIG:  # an offset reaches 2**31 elements: 64-bit indices
        pid_bh = pid_bh.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    g = h // heads_per_group
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.program_id(2) * BN + tl.arange(0, BN)
    offs_t = tl.arange(0, T)
    if BIG:
        offs_t = offs_t.to(tl.int64)
    mp, mn = offs_p < P, offs_n < N
    A = tl.load(A_ptr + h).to(tl.float32)
    pn = offs_p[:, None] * N + offs_n[None, :]
    mpn = mp[:, None] & mn[None, :]
    if HAS_GT:
        r = tl.load(gT_ptr + pid_bh * P * N + pn, mask=mpn, other=0.0).to(tl.float32)
    else:
        r = tl.zeros((BP, BN), dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        tl.store(dst_ptr + ((b * n_chunks + c) * H + h) * P * N + pn, r, mask=mpn)
        t = c * T + offs_t
        mt = t < L
        dt = tl.load(dt_ptr + b * sdb + h * sdh + t * sdl, mask=mt, other=0.0).to(tl.float32)
        a = dt * A
        cs = tl.cumsum(a, 0)
        total = tl.sum(a, 0)
        gy = tl.load(gy_ptr + b * sgb + h * sgh + t[:, None] * sgl + offs_p[None, :] * sgp,
                     mask=mt[:, None] & mp[None, :], other=0.0)  # (T, BP)
        cm = tl.load(C_ptr + b * scb + g * scg + t[:, None] * scl + offs_n[None, :] * scn,
                     mask=mt[:, None] & mn[None, :], other=0.0)  # (T, BN)
        gyw = (gy.to(tl.float32) * tl.exp(cs)[:, None]).to(cm.dtype)
        r = r * tl.exp(total) + tl.dot(tl.trans(gyw), cm, input_precision=PREC)  # (BP, BN)
    tl.store(gh0_ptr + pid_bh * P * N + pn, r, mask=mpn)


@triton.jit
def _ssd_bwd_chunk_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, st_ptr, dst_ptr, gy_ptr,
    gx_ptr, gdt_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr,
    L, H, P, N, heads_per_group, n_chunks,
    sxb, sxl, sxh, sxp, sdb, sdl, sdh, sbb, sbl, sbg, sbn, scb, scl, scg, scn,
    sgb, sgl, sgh, sgp, sgxb, sgxl, sgxh, sgxp, sgdb, sgdl, sgdh,
    T: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, PREC: tl.constexpr, BIG: tl.constexpr = False,
):
    # The state dimension N is walked in blocks of BN (twice: C·Bᵀ needs all of N before the
    # rest), so the register tiles stay (T, T), (T, BP), (T, BN) and (BP, BN) for any N.
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    offs_t = tl.arange(0, T)
    if BIG:  # 64-bit indices (see the state-gradient kernel)
        pid_bh = pid_bh.to(tl.int64)
        c = c.to(tl.int64)
        offs_t = offs_t.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    g = h // heads_per_group
    offs_p = tl.arange(0, BP)
    t = c * T + offs_t
    mt, mp = t < L, offs_p < P
    mtp = mt[:, None] & mp[None, :]
    A = tl.load(A_ptr + h).to(tl.float32)
    dt = tl.load(dt_ptr + b * sdb + h * sdh + t * sdl, mask=mt, other=0.0).to(tl.float32)
    a = dt * A
    cs = tl.cumsum(a, 0)  # (T,)
    total = tl.sum(a, 0)
    w = tl.exp(total - cs)  # decay from each step to the chunk end
    ecs = tl.exp(cs)  # decay from the chunk start to each step

    x = tl.load(x_ptr + b * sxb + h * sxh + t[:, None] * sxl + offs_p[None, :] * sxp, mask=mtp, other=0.0)
    gy = tl.load(gy_ptr + b * sgb + h * sgh + t[:, None] * sgl + offs_p[None, :] * sgp, mask=mtp, other=0.0)
    gy = gy.to(x.dtype)
    b_base = B_ptr + b * sbb + g * sbg + t[:, None] * sbl
    c_base = C_ptr + b * scb + g * scg + t[:, None] * scl
    s_base = ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
    p_base = ((b * L + t[:, None]) * H + h) * N  # (B, L, H, N) partials of gB, gC

    causal = offs_t[:, None] >= offs_t[None, :]
    ldec = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))  # (T, T): rows t, columns s
    cb = tl.zeros((T, T), dtype=tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        mtn = mt[:, None] & (offs_n < N)[None, :]
        bm = tl.load(b_base + offs_n[None, :] * sbn, mask=mtn, other=0.0)
        cm = tl.load(c_base + offs_n[None, :] * scn, mask=mtn, other=0.0)
        cb += tl.dot(cm, tl.trans(bm), input_precision=PREC)  # (T, T)
    gm = tl.dot(gy, tl.trans(x), input_precision=PREC)  # (T, T): gy_t · x_s
    M = cb * ldec
    gd = gm * ldec * dt[None, :]
    gX = tl.dot(tl.trans(M).to(x.dtype), gy, input_precision=PREC)  # (T, BP)

    U = tl.zeros((T,), dtype=tl.float32)  # state-update terms of the decay gradient
    V = tl.zeros((T,), dtype=tl.float32)  # entering-state terms
    RS = tl.zeros((BP,), dtype=tl.float32)  # <R, S> (partial over N)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        mn = offs_n < N
        mtn = mt[:, None] & mn[None, :]
        mpn = mp[:, None] & mn[None, :]
        bm = tl.load(b_base + offs_n[None, :] * sbn, mask=mtn, other=0.0)
        cm = tl.load(c_base + offs_n[None, :] * scn, mask=mtn, other=0.0)
        S = tl.load(st_ptr + s_base + offs_n[None, :], mask=mpn, other=0.0)  # (BP, BN) entering state
        R = tl.load(dst_ptr + s_base + offs_n[None, :], mask=mpn, other=0.0)  # ∂L/∂(state after)
        gX += tl.dot((bm.to(tl.float32) * w[:, None]).to(x.dtype), tl.trans(R).to(x.dtype),
                     input_precision=PREC)
        xR = tl.dot(x, R.to(x.dtype), input_precision=PREC)  # (T, BN)
        gyS = tl.dot(gy, S.to(x.dtype), input_precision=PREC)  # (T, BN)
        gB = tl.dot(tl.trans(gd).to(cm.dtype), cm, input_precision=PREC) + xR * (w * dt)[:, None]
        gC = tl.dot(gd.to(bm.dtype), bm, input_precision=PREC) + gyS * ecs[:, None]
        tl.store(gB_ptr + p_base + offs_n[None, :], gB, mask=mtn)
        tl.store(gC_ptr + p_base + offs_n[None, :], gC, mask=mtn)
        U += tl.sum(xR * bm.to(tl.float32), axis=1)
        V += tl.sum(gyS * cm.to(tl.float32), axis=1)
        RS += tl.sum(R * S, axis=1)

    xf = x.to(tl.float32)
    gdt = tl.sum(gX * xf, axis=1)  # (T,) direct part (Δ scales x)
    gx = gX * dt[:, None]
    if HAS_D:
        gx += gy.to(tl.float32) * tl.load(D_ptr + h).to(tl.float32)
        tl.store(gD_ptr + (b * n_chunks + c) * H + h, tl.sum(tl.sum(gy.to(tl.float32) * xf, axis=1), axis=0))
    tl.store(gx_ptr + b * sgxb + h * sgxh + t[:, None] * sgxl + offs_p[None, :] * sgxp,
             gx.to(gx_ptr.dtype.element_ty), mask=mtp)

    # ∂L/∂a_r (cs_t = a_1 + … + a_t, so ∂a_r = Σ_{t≥r} ∂cs_t), summed without cancellation:
    # the intra-chunk term e^{cs_t − cs_s} depends on a_r exactly when s < r ≤ t; the state
    # update's e^{cs_T − cs_s} when s < r; the entering state's e^{cs_t} when r ≤ t, and e^{cs_T}.
    W = cb * gd  # (T, T): the (t, s) terms of y's dependence on e^{cs_t − cs_s}
    Wx = tl.cumsum(W, 1) - W  # Σ_{s<r} W[t, s] in column r
    ga = tl.sum(tl.where(causal, Wx, 0.0), axis=0)  # Σ_{t≥r} Σ_{s<r} W[t, s]
    U = U * w * dt
    V = V * ecs
    ga += tl.cumsum(V, 0, reverse=True) + (tl.cumsum(U, 0) - U)
    ga += tl.exp(total) * tl.sum(RS, axis=0)
    gdt += ga * A
    tl.store(gA_ptr + (b * n_chunks + c) * H + h, tl.sum(ga * dt, axis=0))
    tl.store(gdt_ptr + b * sgdb + h * sgdh + t * sgdl, gdt.to(gdt_ptr.dtype.element_ty), mask=mt)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def ssd_bwd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, initial_state: torch.Tensor | None, states: torch.Tensor,
    gy: torch.Tensor | None, gfinal: torch.Tensor | None, chunk_size: int,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (x, dt, A, B, C, D, initial_state), each in its input's dtype (None for an
    absent input). ``states``: (B, chunks, H, P, N) fp32, the states entering each chunk (the
    forward's). gy: (B, L, H, P) (None: zero); gfinal: (B, H, P, N) (None: zero)."""
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    T = chunk_size
    n_chunks = states.shape[1]
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    Bk = B if B.dtype == x.dtype else B.to(x.dtype)
    Ck = C if C.dtype == x.dtype else C.to(x.dtype)
    if gy is None:
        gy = torch.zeros(batch, L, H, P, device=dev, dtype=x.dtype)
    stages = 1 if _INTERPRET else 2
    big = needs_int64(x, B, C, gy, states)

    dstates = torch.empty_like(states)
    gh0 = torch.empty(batch, H, P, N, **f32)
    gT = gfinal.to(torch.float32).contiguous() if gfinal is not None else None
    BP_s = min(_pow2(P, 32), 64)
    BN_s = min(_pow2(N), 64 if P <= 32 else 32)
    grid = (batch * H, triton.cdiv(P, BP_s), triton.cdiv(N, BN_s))
    _ssd_bwd_dstate_kernel[grid](
        gy, dt, A, Ck, gT if gT is not None else gh0, dstates, gh0,
        L, H, P, N, H // G, n_chunks,
        *gy.stride(), *dt.stride(), *Ck.stride(),
        T=T, BP=BP_s, BN=BN_s, HAS_GT=gT is not None, PREC=prec, BIG=big, num_warps=4, num_stages=stages,
    )

    gx = torch.empty(batch, L, H, P, device=dev, dtype=x.dtype)
    gdt = torch.empty(batch, L, H, device=dev, dtype=dt.dtype)
    gBp = torch.empty(batch, L, H, N, **f32)
    gCp = torch.empty(batch, L, H, N, **f32)
    gAp = torch.empty(batch, n_chunks, H, **f32)
    gDp = torch.empty(batch, n_chunks, H, **f32)
    BP, BN = _pow2(P, 32), min(_pow2(N), 32)
    _ssd_bwd_chunk_kernel[(batch * H, n_chunks)](
        x, dt, A, Bk, Ck, D if D is not None else A, states, dstates, gy,
        gx, gdt, gBp, gCp, gAp, gDp,
        L, H, P, N, H // G, n_chunks,
        *x.stride(), *dt.stride(), *Bk.stride(), *Ck.stride(), *gy.stride(), *gx.stride(), *gdt.stride(),
        T=T, BP=BP, BN=BN, HAS_D=D is not None, PREC=prec, BIG=big,
        num_warps=4 if T * max(T, BP) <= 4096 else 8, num_stages=stages,
    )
    gB = gBp.view(batch, L, G, H // G, N).sum(3)
    gC = gCp.view(batch, L, G, H // G, N).sum(3)
    return (
        gx, gdt, gAp.sum((0, 1)).to(A.dtype), gB.to(B.dtype), gC.to(C.dtype),
        gDp.sum((0, 1)).to(D.dtype) if D is not None else None,
        gh0.to(initial_state.dtype) if initial_state is not None else None,
    )
