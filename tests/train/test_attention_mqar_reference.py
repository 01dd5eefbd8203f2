"""Attention is what MQAR's two-layer circuit needs: causal, scaled by 1/sqrt(head_dim), RoPE on q and k.

Written while diagnosing why 2-layer attention stays on the MQAR plateau (docs/training.md,
"Why 2-layer attention stays at 0.34 on MQAR"): a wrong mask, scale or rotation would let the
models learn something else than the paper's. The naive version below spells each rule out in a
float64 loop over positions; weights are scaled up so that the attention is sharp and any such
error shows in the output.
"""

from __future__ import annotations

import math

import torch

from evalkit.models.native.attention import Attention
from evalkit.models.native.config import NativeConfig


def _rotate(t: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE by hand, t: (B, L, H, hd): pair (i, i + hd/2) at position p turns by p * theta^(-2i/hd)."""
    out = t.clone()
    hd = t.shape[-1]
    for p in range(t.shape[1]):
        for i in range(hd // 2):
            a = p * theta ** (-2 * i / hd)
            c, s = math.cos(a), math.sin(a)
            x1, x2 = t[:, p, :, i], t[:, p, :, i + hd // 2]
            out[:, p, :, i], out[:, p, :, i + hd // 2] = x1 * c - x2 * s, x1 * s + x2 * c
    return out


def _naive(m: Attention, x: torch.Tensor) -> torch.Tensor:
    """x: (B, L, D) → (B, L, D): softmax over positions j <= i of q_i·k_j / sqrt(hd), one at a time."""
    B, L, D = x.shape
    H, hd = m.n_heads, m.head_dim
    q, k, v = m.qkv(x).view(B, L, 3, H, hd).unbind(2)  # (B, L, H, hd) each
    q, k = _rotate(q, m.cfg.rope_theta), _rotate(k, m.cfg.rope_theta)
    y = torch.zeros(B, L, H, hd, dtype=x.dtype)
    for i in range(L):
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, : i + 1]) / math.sqrt(hd)  # (B, H, i+1)
        y[:, i] = torch.einsum("bhj,bjhd->bhd", scores.softmax(-1), v[:, : i + 1])
    return m.out_proj(y.reshape(B, L, D))


def test_attention_matches_a_naive_causal_rope_loop() -> None:
    torch.manual_seed(0)
    cfg = NativeConfig(d_model=32, n_layers=2, n_heads=2, pattern="AA", d_ff=0, rope_theta=100.0)
    m = Attention(cfg, 0).double()
    m.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.qkv.weight.mul_(30)  # sharp attention: a wrong mask, scale or rotation changes the output
        m.out_proj.weight.mul_(30)
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    ref = _naive(m, x)
    assert ref.abs().max() > 0.1
    # our RoPE computes its angles in float32, hence 1e-5 and not 1e-12
    torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-5)
    # and a future position never leaks into an earlier one
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 6, 32, dtype=torch.float64)
    torch.testing.assert_close(m(x2)[:, :7], m(x)[:, :7], rtol=0, atol=1e-12)
