"""Causal depthwise conv1d (the short convolution in front of Mamba's scan), with the SiLU after it:
the readable PyTorch definition.

``y[b, c, t] = act(bias[c] + Σ_j weight[c, j] · x[b, c, t - (W-1) + j])`` for t in [0, L), where positions
before 0 read ``initial_state[b, c, W-1 + (t - (W-1) + j)]`` (the last W-1 inputs of what came before; zeros
when None), and ``act`` is SiLU or the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu")


def conv_tail(x: torch.Tensor, k: int) -> torch.Tensor:
    """The conv state after a prefix: the last k-1 inputs of x (B, C, L), zero-padded on the left."""
    x = F.pad(x, (k - 1, 0))  # (B, C, L + k - 1)
    return x[:, :, x.shape[2] - (k - 1):]


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      initial_state: torch.Tensor | None = None, activation: str | None = "silu",
                      return_final_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, L) (any strides); weight: (C, W); bias: (C,) or None; initial_state: (B, C, W-1) or None.
    Returns y (B, C, L) in x's dtype, and with ``return_final_state`` the conv state after x (B, C, W-1): the
    last W-1 inputs, reaching into ``initial_state`` where L < W-1. ``F.conv1d`` does the arithmetic (as
    ``nn.Conv1d`` with ``padding=W-1`` does, cut to the first L outputs)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {ACTIVATIONS}")
    C, W = weight.shape
    L = x.shape[-1]
    w = weight[:, None, :]  # (C, 1, W), nn.Conv1d's depthwise layout
    if initial_state is None:
        y = F.conv1d(x, w, bias, padding=W - 1, groups=C)[..., :L]
        tail = conv_tail(x, W) if return_final_state else None
    else:
        xp = torch.cat([initial_state.to(x.dtype), x], dim=2)  # (B, C, W-1+L): the real left context
        y = F.conv1d(xp, w, bias, groups=C)
        tail = conv_tail(xp, W) if return_final_state else None
    if activation == "silu":
        y = F.silu(y)
    return (y, tail) if return_final_state else y
