"""Triton decode step of SSD (Mamba-2): one token, state in, new state out, with the mixer's
softplus(Δ + bias), the D skip and the SiLU(z) gate fused. Same semantics as
:func:`evalkit.kernels.ssd.ref.ssd_step_ref`.

One program per (batch, head, block of ``BP`` head channels) holds a (BP, N) block of the state in
registers; the step reads and writes the state once (its bytes are the cost).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evalkit.kernels.selective_scan.triton import _softplus


@triton.jit
def _ssd_step_kernel(
    h_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, hn_ptr,
    H, P, N, heads_per_group,
    sxb, sxh, sxp, sdb, sdh, sbb, sbg, sbn, scb, scg, scn, szb, szh, szp, syb, syh, syp,
    BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    g = h // heads_per_group
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp, mn = offs_p < P, offs_n < N
    mpn = mp[:, None] & mn[None, :]
    hidx = pid_bh * P * N + offs_p[:, None] * N + offs_n[None, :]
    s = tl.load(h_ptr + hidx, mask=mpn, other=0.0)  # (BP, BN) fp32
    dt = tl.load(dt_ptr + b * sdb + h * sdh).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    x = tl.load(x_ptr + b * sxb + h * sxh + offs_p * sxp, mask=mp, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * sbb + g * sbg + offs_n * sbn, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * scb + g * scg + offs_n * scn, mask=mn, other=0.0).to(tl.float32)
    dA = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))
    s = dA * s + (dt * x)[:, None] * Bv[None, :]
    y = tl.sum(s * Cv[None, :], axis=1)  # (BP,)
    if HAS_D:
        y += x * tl.load(D_ptr + h).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * szb + h * szh + offs_p * szp, mask=mp, other=0.0).to(tl.float32)
        y *= zz / (1.0 + tl.exp(-zz))
    tl.store(hn_ptr + hidx, s, mask=mpn)
    tl.store(y_ptr + b * syb + h * syh + offs_p * syp, y.to(y_ptr.dtype.element_ty), mask=mp)


def ssd_step(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """state: (B, H, P, N) float32; x, z: (B, H, P); dt: (B, H); A, D, dt_bias: (H,);
    B, C: (B, G, N). Returns y·silu(z) (B, H, P) in x's dtype and the new state (a new tensor)."""
    batch, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    s = state.contiguous()
    new = torch.empty_like(s)
    y = torch.empty(batch, H, P, device=x.device, dtype=x.dtype)
    zt = z if z is not None else x
    BN = triton.next_power_of_2(N)
    BP = min(triton.next_power_of_2(P), max(1, 4096 // BN))
    _ssd_step_kernel[(batch * H, triton.cdiv(P, BP))](
        s, x, dt, A, B, C, D if D is not None else A, zt, dt_bias if dt_bias is not None else A,
        y, new, H, P, N, H // G,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *zt.stride(), *y.stride(),
        BP=BP, BN=BN, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=dt_softplus, num_warps=4,
    )
    return y, new
