"""Per-position layers shared by blocks and mixers: RMSNorm and the SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.models.native.mixer import init_normal_, out_proj_std
from evalkit.models.native.config import NativeConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """The LLaMA MLP: down(silu(gate(x)) * up(x)), hidden size cfg.d_ff."""

    def __init__(self, cfg: NativeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., d_ff) each
        return self.down(F.silu(gate) * up)

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.gate_up.weight, 0.02, gen)
        init_normal_(self.down.weight, out_proj_std(self.cfg), gen)
