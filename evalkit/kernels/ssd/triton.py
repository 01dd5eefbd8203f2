"""Triton SSD (Mamba-2) forward: two kernels, fp32 accumulation, any L, bf16/fp16/fp32 inputs.

Same semantics and shapes as :func:`evalkit.kernels.ssd.ref.ssd_ref` (x: (B, L, H, P); dt: (B, L, H),
already softplus-ed; A: (H,); B, C: (B, L, G, N); D: (H,); initial_state: (B, H, P, N)).

1. ``_ssd_state_kernel`` — one program per (batch, head, P-block, N-block) walks the *state
   chunks* (up to ``STATE_CHUNK`` = 512 steps, several output chunks) in order with its state block in
   registers: it stores the state entering each state chunk (fp32) and updates it with the
   chunk's decayed inputs, ``S ← exp(ΣΔA) S + (x·w)ᵀ B`` (one tensor-core dot per state chunk,
   w = Δ · exp(decay to the chunk end)), then stores the final state. This fuses mamba_ssm's
   "chunk state" and "state passing" steps, and the long state chunk makes the serial walk (the
   latency-bound part) and the stored states K times shorter than with one state per chunk.
2. ``_ssd_out_kernel`` — one program per (batch, head, state chunk, P-block), independent of each
   other: from the stored state it walks the K output chunks of T steps in order, per chunk
   ``y = ((C Bᵀ) ∘ exp(segsum ΔA) · Δ) x + exp(cumsum ΔA) · (C Sᵀ) + D x``, then the same state
   update as the state kernel, in registers (optionally storing each chunk's entering state,
   which the backward reuses).

The chunk-local decays are recomputed in both kernels from dt (a cumsum of T numbers is cheaper
than storing it). Backward: ``triton_bwd.py`` (Triton), wired in by :class:`_SSDFn`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from evalkit.kernels.dispatch import needs_int64, note_variant

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _ssd_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, h0_ptr, st_ptr, hT_ptr,
    L, H, P, N, heads_per_group, n_chunks,
    sxb, sxl, sxh, sxp, sdb, sdl, sdh, sbb, sbl, sbg, sbn,
    T: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_H0: tl.constexpr, PREC: tl.constexpr, BIG: tl.constexpr = False,
):
    pid_bh = tl.program_id(0)
    if BIG:  # an offset reaches 2**31 elements (e.g. 1M steps x 4096 channels): 64-bit indices
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
    # state tiles: (B, H, P, N) for h0 / final, (B, chunks, H, P, N) for the entering states
    pn = offs_p[:, None] * N + offs_n[None, :]
    mpn = mp[:, None] & mn[None, :]
    if HAS_H0:
        s = tl.load(h0_ptr + pid_bh * P * N + pn, mask=mpn, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BP, BN), dtype=tl.float32)
    x_base = x_ptr + b * sxb + h * sxh
    dt_base = dt_ptr + b * sdb + h * sdh
    b_base = B_ptr + b * sbb + g * sbg
    for c in range(n_chunks):
        tl.store(st_ptr + ((b * n_chunks + c) * H + h) * P * N + pn, s, mask=mpn)
        t = c * T + offs_t
        mt = t < L
        dt = tl.load(dt_base + t * sdl, mask=mt, other=0.0).to(tl.float32)  # (T,)
        a = dt * A
        total = tl.sum(a, 0)
        # (T,) weight of each step in the chunk-end state: the decay after step t is a reverse
        # cumsum (total − cumsum would cancel over a long state chunk: 1e-5 relative error)
        w = tl.exp(tl.cumsum(a, 0, reverse=True) - a) * dt
        x = tl.load(x_base + t[:, None] * sxl + offs_p[None, :] * sxp,
                    mask=mt[:, None] & mp[None, :], other=0.0)  # (T, BP)
        bm = tl.load(b_base + t[:, None] * sbl + offs_n[None, :] * sbn,
                     mask=mt[:, None] & mn[None, :], other=0.0)  # (T, BN)
        xw = (x.to(tl.float32) * w[:, None]).to(x.dtype)
        s = s * tl.exp(total) + tl.dot(tl.trans(xw), bm, input_precision=PREC)  # (BP, BN)
    tl.store(hT_ptr + pid_bh * P * N + pn, s, mask=mpn)


@triton.jit
def _ssd_out_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, st_ptr, y_ptr, sub_ptr,
    L, H, P, N, heads_per_group, n_chunks, n_state_chunks,
    sxb, sxl, sxh, sxp, sdb, sdl, sdh, sbb, sbl, sbg, sbn, scb, scl, scg, scn,
    syb, syl, syh, syp,
    T: tl.constexpr, K: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, STORE_SUB: tl.constexpr, PREC: tl.constexpr, NSPLIT: tl.constexpr = False,
    BIG: tl.constexpr = False,
):
    # One program per (batch·head, state chunk of K·T steps, P-block): it loads the state
    # entering its state chunk and walks the K chunks of T steps in order, keeping the state
    # (transposed, (BN, BP) fp32) in registers: per chunk the output, then (K > 1) the update
    # S ← e^{ΣΔA} S + Bᵀ (x·w). With STORE_SUB it stores the state entering every chunk.
    pid_bh = tl.program_id(0)
    cc = tl.program_id(1)
    if BIG:  # 64-bit indices (see the state kernel)
        pid_bh = pid_bh.to(tl.int64)
        cc = cc.to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    g = h // heads_per_group
    offs_p = tl.program_id(2) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, T)
    if BIG:
        offs_t = offs_t.to(tl.int64)
    mp, mn = offs_p < P, offs_n < N
    mnp = mn[:, None] & mp[None, :]
    A = tl.load(A_ptr + h).to(tl.float32)
    causal = offs_t[:, None] >= offs_t[None, :]
    if NSPLIT:
        # K = 1 (one state per chunk, read from memory) with N walked in blocks of BN: a large state
        # (N = 256) never sits whole in registers. With (T, 256) tiles and a (256, BP) fp32 state the
        # one-pass path below crashed on the H200 (illegal address, Triton 3.6; kernels/NOTES.md v6).
        t = cc * T + offs_t
        mt = t < L
        dt = tl.load(dt_ptr + b * sdb + h * sdh + t * sdl, mask=mt, other=0.0).to(tl.float32)
        cs = tl.cumsum(dt * A, 0)
        x = tl.load(x_ptr + b * sxb + h * sxh + t[:, None] * sxl + offs_p[None, :] * sxp,
                    mask=mt[:, None] & mp[None, :], other=0.0)  # (T, BP)
        cb = tl.zeros((T, T), dtype=tl.float32)
        ys = tl.zeros((T, BP), dtype=tl.float32)
        for n0 in range(0, N, BN):
            on = n0 + offs_n
            mnb = on < N
            cm = tl.load(C_ptr + b * scb + g * scg + t[:, None] * scl + on[None, :] * scn,
                         mask=mt[:, None] & mnb[None, :], other=0.0)  # (T, BN)
            bm = tl.load(B_ptr + b * sbb + g * sbg + t[:, None] * sbl + on[None, :] * sbn,
                         mask=mt[:, None] & mnb[None, :], other=0.0)
            cb += tl.dot(cm, tl.trans(bm), input_precision=PREC)
            sb = tl.load(st_ptr + ((b * n_state_chunks + cc) * H + h) * P * N + offs_p[None, :] * N + on[:, None],
                         mask=mnb[:, None] & mp[None, :], other=0.0)  # (BN, BP)
            ys += tl.dot(cm, sb.to(cm.dtype), input_precision=PREC)
        seg = tl.where(causal, cs[:, None] - cs[None, :], float("-inf"))
        m = cb * tl.exp(seg) * dt[None, :]
        y = tl.dot(m.to(x.dtype), x, input_precision=PREC) + ys * tl.exp(cs)[:, None]
        if HAS_D:
            y += x.to(tl.float32) * tl.load(D_ptr + h).to(tl.float32)
        tl.store(y_ptr + b * syb + h * syh + t[:, None] * syl + offs_p[None, :] * syp,
                 y.to(y_ptr.dtype.element_ty), mask=mt[:, None] & mp[None, :])
        return
    s = tl.load(st_ptr + ((b * n_state_chunks + cc) * H + h) * P * N + offs_p[None, :] * N + offs_n[:, None],
                mask=mnp, other=0.0)  # (BN, BP): the entering state, transposed
    for j in range(K):
        c = cc * K + j
        if STORE_SUB:
            live = (offs_n * 0 + c) < n_chunks  # a vector mask: the interpreter rejects scalar ones
            tl.store(sub_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[None, :] * N + offs_n[:, None],
                     s, mask=mnp & live[:, None])
        t = c * T + offs_t
        mt = t < L
        dt = tl.load(dt_ptr + b * sdb + h * sdh + t * sdl, mask=mt, other=0.0).to(tl.float32)
        cs = tl.cumsum(dt * A, 0)  # (T,) chunk-local cumulative log decay
        cm = tl.load(C_ptr + b * scb + g * scg + t[:, None] * scl + offs_n[None, :] * scn,
                     mask=mt[:, None] & mn[None, :], other=0.0)  # (T, BN)
        bm = tl.load(B_ptr + b * sbb + g * sbg + t[:, None] * sbl + offs_n[None, :] * sbn,
                     mask=mt[:, None] & mn[None, :], other=0.0)  # (T, BN)
        cb = tl.dot(cm, tl.trans(bm), input_precision=PREC)  # (T, T)
        seg = tl.where(causal, cs[:, None] - cs[None, :], float("-inf"))
        m = cb * tl.exp(seg) * dt[None, :]  # (T, T): decay-masked "attention" times Δ of the source
        x = tl.load(x_ptr + b * sxb + h * sxh + t[:, None] * sxl + offs_p[None, :] * sxp,
                    mask=mt[:, None] & mp[None, :], other=0.0)  # (T, BP)
        y = tl.dot(m.to(x.dtype), x, input_precision=PREC)  # (T, BP)
        y += tl.dot(cm, s.to(cm.dtype), input_precision=PREC) * tl.exp(cs)[:, None]
        if HAS_D:
            y += x.to(tl.float32) * tl.load(D_ptr + h).to(tl.float32)
        tl.store(y_ptr + b * syb + h * syh + t[:, None] * syl + offs_p[None, :] * syp,
                 y.to(y_ptr.dtype.element_ty), mask=mt[:, None] & mp[None, :])
        if K > 1:
            a = dt * A
            total = tl.sum(a, 0)
            xw = (x.to(tl.float32) * (tl.exp(tl.cumsum(a, 0, reverse=True) - a) * dt)[:, None]).to(x.dtype)
            s = s * tl.exp(total) + tl.dot(tl.trans(bm), xw, input_precision=PREC)  # (BN, BP)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


# The state kernel walks chunks of up to STATE_CHUNK steps (K = state chunk / chunk output chunks
# each): a K-times shorter serial walk and K-times fewer stored states; the output kernel re-derives
# the states inside each state chunk on the fly. 512 was the fastest on the H100 at 64k (1024 does
# not fit in shared memory); shorter sequences halve it until the output kernel has at least
# MIN_OUT_PROGRAMS programs (kernels/NOTES.md, v4).
STATE_CHUNK = 512
MIN_OUT_PROGRAMS = 512
# States wider than OUT_MAX_N: the output kernel walks N in blocks of OUT_BLOCK_N, one state per chunk.
OUT_MAX_N = 128
OUT_BLOCK_N = 64


def default_state_chunk(batch: int, heads: int, L: int, chunk: int, p_blocks: int = 1) -> int:
    """The state kernel's chunk: STATE_CHUNK, halved (down to ``chunk``) while the output kernel
    would get fewer than MIN_OUT_PROGRAMS programs (a short sequence needs its parallelism)."""
    ts = max(chunk, STATE_CHUNK)
    while ts > chunk and batch * heads * p_blocks * triton.cdiv(L, ts) < MIN_OUT_PROGRAMS:
        ts //= 2
    return ts


def ssd_fwd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    chunk_size: int, D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
    state_block_n: int | None = None, num_stages: int | None = None, return_states: bool = False,
    state_chunk: int | None = None, out_block_p: int | None = None, out_warps: int | None = None,
    state_warps: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Forward only (no autograd). Returns y (B, L, H, P) in x's dtype and the final state
    (B, H, P, N) in float32. ``chunk_size`` must be a power of two in [16, 256] (it changes
    rounding only, not the result). ``return_states`` adds the states entering each chunk,
    (B, chunks, H, P, N) fp32, which the backward reuses.

    Tuning knobs (kernels/bench.py sweeps them; None = the default): ``state_chunk``, the steps
    per serial step of the state kernel (a power-of-two multiple of ``chunk_size``; default
    ``default_state_chunk``); ``state_block_n`` / ``state_warps``, its N block and
    warps; ``out_block_p`` / ``out_warps``, the output kernel's P block and warps; ``num_stages``.
    A state wider than ``OUT_MAX_N`` ignores ``state_chunk``: one state per chunk, the output kernel
    walking N in blocks of ``OUT_BLOCK_N`` (the one-pass output kernel crashed at N = 256 on the H200)."""
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    T = chunk_size
    BP_o = max(32, min(_pow2(P, 32), out_block_p or 64))
    nsplit = _pow2(N) > OUT_MAX_N  # a large state: one state per chunk, N walked in blocks
    TS = T if nsplit else max(T, state_chunk or default_state_chunk(batch, H, L, T, triton.cdiv(P, BP_o)))
    if TS % T or TS & (TS - 1):
        raise ValueError(f"state_chunk {TS} must be a power-of-two multiple of chunk_size {T}")
    n_chunks = max(1, triton.cdiv(L, T))
    n_sc = max(1, triton.cdiv(L, TS))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    if B.dtype != x.dtype:
        B = B.to(x.dtype)
    if C.dtype != x.dtype:
        C = C.to(x.dtype)
    dev = x.device
    states = torch.empty(batch, n_sc, H, P, N, device=dev, dtype=torch.float32)
    sub = (torch.empty(batch, n_chunks, H, P, N, device=dev, dtype=torch.float32)
           if return_states and TS > T else states)
    final = torch.empty(batch, H, P, N, device=dev, dtype=torch.float32)
    y = torch.empty(batch, L, H, P, device=dev, dtype=x.dtype)
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else final
    BN_full = _pow2(N)
    # P blocks of at least 32: with 16-wide P blocks the output kernel returned NaN on the H100
    # (Triton 3.6; fine under the interpreter) — see kernels/NOTES.md.
    BP_s = min(_pow2(P, 32), 64)
    BN_s = min(BN_full, state_block_n or (64 if P <= 32 else 32))
    stages = 1 if _INTERPRET else (num_stages or 2)
    big = needs_int64(x, dt, B, C, y, states, sub)
    note_variant("ssd", "n-blocked" if nsplit else f"state-chunk-{TS}")
    grid = (batch * H, triton.cdiv(P, BP_s), triton.cdiv(N, BN_s))
    _ssd_state_kernel[grid](
        x, dt, A, B, h0, states, final, L, H, P, N, H // G, n_sc,
        *x.stride(), *dt.stride(), *B.stride(),
        T=TS, BP=BP_s, BN=BN_s, HAS_H0=initial_state is not None, PREC=prec, BIG=big,
        num_warps=state_warps or (4 if TS * max(BP_s, BN_s) <= 16384 else 8), num_stages=stages,
    )
    grid = (batch * H, n_sc, triton.cdiv(P, BP_o))
    _ssd_out_kernel[grid](
        x, dt, A, B, C, D if D is not None else A, states, y, sub, L, H, P, N, H // G, n_chunks, n_sc,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *y.stride(),
        T=T, K=TS // T, BP=BP_o, BN=OUT_BLOCK_N if nsplit else BN_full, HAS_D=D is not None,
        STORE_SUB=sub is not states, PREC=prec, NSPLIT=nsplit, BIG=big,
        num_warps=out_warps or (4 if nsplit or T * BN_full <= 8192 else 8), num_stages=stages,
    )
    return (y, final, sub) if return_states else (y, final)


class _SSDFn(torch.autograd.Function):
    """Triton forward (keeping the chunk-entry states) and Triton backward (``triton_bwd.py``)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, chunk_size):  # type: ignore[override]
        y, final, states = ssd_fwd(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state,
                                   return_states=True)
        ctx.save_for_backward(x, dt, A, B, C, D, initial_state, states)
        ctx.chunk_size = chunk_size
        return y, final

    @staticmethod
    def backward(ctx, gy, gfinal):  # type: ignore[override]
        from evalkit.kernels.ssd.triton_bwd import ssd_bwd

        x, dt, A, B, C, D, h0, states = ctx.saved_tensors
        grads = ssd_bwd(x, dt, A, B, C, D, h0, states, gy, gfinal, ctx.chunk_size)
        return (*grads, None)


def kernel_chunk_size(chunk_size: int) -> int:
    """The chunk the kernel uses: the caller's if it is a power of two in [16, 256], else 64."""
    ok = 16 <= chunk_size <= 256 and chunk_size & (chunk_size - 1) == 0
    return chunk_size if ok else 64


def ssd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    chunk_size: int, D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton SSD with the semantics of :func:`ssd_ref`; differentiable (Triton backward)."""
    if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state)):
        y, final = ssd_fwd(x, dt, A, B, C, kernel_chunk_size(chunk_size), D=D, initial_state=initial_state)
        return (y, final) if return_final_state else y
    # The backward's per-chunk tiles grow as chunk²: with a gradient, chunks of at most 64 steps
    # (the chunk changes rounding only, not the function).
    y, final = _SSDFn.apply(x, dt, A, B, C, D, initial_state, min(64, kernel_chunk_size(chunk_size)))
    return (y, final) if return_final_state else y
