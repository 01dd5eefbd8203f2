"""Triton decode step of the selective scan (Mamba-1): one token, state in, new state out, with
softplus(Δ + bias), the D skip and the SiLU(z) gate fused. Same semantics as
:func:`evalkit.kernels.selective_scan.ref.selective_scan_step_ref`.

One program per (batch, block of ``BD`` channels) holds its (BD, N) state block in registers: a
decode step reads the state once and writes it once, which is the whole cost at this size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evalkit.kernels.selective_scan.triton import _softplus


@triton.jit
def _selective_scan_step_kernel(
    h_ptr, u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, hn_ptr,
    Dm, N, sub, sud, sdb, sdd, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd,
    BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    md, mn = offs_d < Dm, offs_n < N
    mdn = md[:, None] & mn[None, :]
    hidx = b * Dm * N + offs_d[:, None] * N + offs_n[None, :]
    h = tl.load(h_ptr + hidx, mask=mdn, other=0.0)  # (BD, BN) fp32
    u = tl.load(u_ptr + b * sub + offs_d * sud, mask=md, other=0.0).to(tl.float32)
    dl = tl.load(dl_ptr + b * sdb + offs_d * sdd, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dl += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dl = _softplus(dl)
    A = tl.load(A_ptr + offs_d[:, None] * sad + offs_n[None, :] * san, mask=mdn, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * sbb + offs_n * sbn, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * scb + offs_n * scn, mask=mn, other=0.0).to(tl.float32)
    h = tl.exp(dl[:, None] * A) * h + (dl * u)[:, None] * Bv[None, :]
    y = tl.sum(h * Cv[None, :], axis=1)  # (BD,)
    if HAS_D:
        y += u * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * szb + offs_d * szd, mask=md, other=0.0).to(tl.float32)
        y *= zz / (1.0 + tl.exp(-zz))
    tl.store(hn_ptr + hidx, h, mask=mdn)
    tl.store(y_ptr + b * syb + offs_d * syd, y.to(y_ptr.dtype.element_ty), mask=md)


def selective_scan_step(
    state: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None, delta_softplus: bool = True, block_d: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """state: (B, D, N) float32; u, delta, z: (B, D); A: (D, N); B, C: (B, N); D, delta_bias: (D,).
    Returns y (B, D) in u's dtype and the new state (B, D, N) float32 (a new tensor)."""
    batch, Dm = u.shape
    N = A.shape[1]
    h = state.contiguous()
    new = torch.empty_like(h)
    y = torch.empty(batch, Dm, device=u.device, dtype=u.dtype)
    zt = z if z is not None else u
    BD = min(block_d, triton.next_power_of_2(Dm))
    _selective_scan_step_kernel[(batch, triton.cdiv(Dm, BD))](
        h, u, delta, A, B, C, D if D is not None else A, zt, delta_bias if delta_bias is not None else A,
        y, new, Dm, N, *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *zt.stride(), *y.stride(),
        BD=BD, BN=triton.next_power_of_2(N), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, num_warps=4,
    )
    return y, new
