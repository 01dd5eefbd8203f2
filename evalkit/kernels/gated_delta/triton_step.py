"""Triton decode step of the gated delta rule: one token, state in, new state out. Same
semantics as :func:`evalkit.kernels.gated_delta.ref.gated_delta_step`:

    S ← e^g S;   u = β (v − S k);   S ← S + u kᵀ;   o = S q

One program per (batch, head, block of ``BP`` value channels) holds a (BP, N) block of the fp32
state in registers (each value row of S updates independently); the step reads and writes the
state once, which is its cost.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gdn_step_kernel(
    s_ptr, q_ptr, k_ptr, v_ptr, g_ptr, b_ptr, o_ptr, sn_ptr,
    H, N, P,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svp, sgb, sgh, sbb, sbh,
    BP: tl.constexpr, BN: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp, mn = offs_p < P, offs_n < N
    mpn = mp[:, None] & mn[None, :]
    idx = pid_bh * P * N + offs_p[:, None] * N + offs_n[None, :]
    S = tl.load(s_ptr + idx, mask=mpn, other=0.0)  # (BP, BN) fp32
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_n * sqn, mask=mn, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + b * skb + h * skh + offs_n * skn, mask=mn, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b * svb + h * svh + offs_p * svp, mask=mp, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + b * sgb + h * sgh).to(tl.float32)
    beta = tl.load(b_ptr + b * sbb + h * sbh).to(tl.float32)
    S = tl.exp(g) * S
    u = beta * (v - tl.sum(S * k[None, :], axis=1))  # (BP,): the delta-rule correction
    S = S + u[:, None] * k[None, :]
    o = tl.sum(S * q[None, :], axis=1)
    tl.store(sn_ptr + idx, S, mask=mpn)
    tl.store(o_ptr + pid_bh * P + offs_p, o, mask=mp)


def gated_delta_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: (B, H, N); v: (B, H, P); g, beta: (B, H); state: (B, H, P, N) float32. Returns
    o (B, H, P) and the new state (a new tensor), both float32 (the state's dtype, as the
    reference)."""
    batch, H, N = k.shape
    P = v.shape[-1]
    s = state.contiguous()
    new = torch.empty_like(s)
    o = torch.empty(batch, H, P, device=v.device, dtype=s.dtype)
    BN = triton.next_power_of_2(N)
    BP = min(triton.next_power_of_2(P), max(1, 4096 // BN))
    _gdn_step_kernel[(batch * H, triton.cdiv(P, BP))](
        s, q, k, v, g, beta, o, new, H, N, P,
        *q.stride(), *k.stride(), *v.stride(), *g.stride(), *beta.stride(),
        BP=BP, BN=BN, num_warps=4,
    )
    return o, new
