"""Mamba-2 mixer (Dao & Gu, 2024), following mamba_ssm's ``Mamba2Simple`` with one group.

in_proj → (z, x, B, C, dt); causal depthwise conv + SiLU over (x, B, C); per-head scalar decay
A = -exp(A_log) and step dt = softplus(dt + dt_bias); the SSD scan; D skip; gated RMSNorm
norm(y * SiLU(z)); out_proj.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.kernels.ssd import ssd, ssd_step
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mamba import causal_conv_step, conv_silu
from evalkit.models.native.mixer import (Mixer, init_dt_bias_, init_normal_, init_uniform_,
                                         out_proj_std, register_mixer)
from evalkit.models.native.mlp import RMSNorm

# Decode state: (conv_state (B, d_inner + 2N, d_conv-1), ssm_state (B, H, P, N) in fp32/fp64).
SSMState = tuple[torch.Tensor, torch.Tensor]


@register_mixer("mamba2")
class Mamba2(Mixer):
    """Mamba-2 (SSD) block with ngroups = 1."""

    is_attention = False

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.d_inner, self.N = cfg.d_inner, cfg.d_state
        self.headdim = cfg.headdim
        self.nheads = cfg.d_inner // cfg.headdim
        self.conv_dim = self.d_inner + 2 * self.N  # x, B, C go through the conv
        self.in_proj = nn.Linear(cfg.d_model, 2 * self.d_inner + 2 * self.N + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.norm = RMSNorm(self.d_inner, cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.in_proj.weight, 0.02, gen)
        bound = self.cfg.d_conv ** -0.5  # PyTorch's default conv init, fan_in = d_conv
        init_uniform_(self.conv1d.weight, -bound, bound, gen)
        init_uniform_(self.conv1d.bias, -bound, bound, gen)
        init_dt_bias_(self.dt_bias, gen)
        a = torch.empty(self.nheads)
        init_uniform_(a, 1.0, 16.0, gen)  # A in [1, 16], as in Mamba2Simple
        with torch.no_grad():
            self.A_log.copy_(torch.log(a))
            self.D.fill_(1.0)
            self.norm.weight.fill_(1.0)
        init_normal_(self.out_proj.weight, out_proj_std(self.cfg), gen)

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., d_in_proj) → z (..., d_inner), xBC (..., conv_dim), dt (..., nheads)."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _gate_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gated RMSNorm then out_proj: out_proj(norm(y * silu(z))). y, z: (..., d_inner)."""
        return self.out_proj(self.norm(y * F.silu(z)))

    def _forward(self, u: torch.Tensor, return_state: bool, state: SSMState | None = None):
        Bsz, L, _ = u.shape
        z, xBC, dt = self._split(self.in_proj(u))  # (B, L, ·)
        xBC, conv_state = conv_silu(xBC.transpose(1, 2), self.conv1d, None if state is None else state[0],
                                    return_state)
        xBC = xBC.transpose(1, 2)  # (B, L, conv_dim)
        x, B, C = xBC.split([self.d_inner, self.N, self.N], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H)
        out = ssd(
            x.reshape(Bsz, L, self.nheads, self.headdim), dt, -torch.exp(self.A_log),
            B[:, :, None], C[:, :, None], self.cfg.chunk_size, D=self.D,
            initial_state=None if state is None else state[1], return_final_state=return_state,
        )
        y, ssm_state = out if return_state else (out, None)
        y = self._gate_out(y.reshape(Bsz, L, self.d_inner), z)  # (B, L, D)
        if not return_state:
            return y
        return y, (conv_state, ssm_state)

    def _continue(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        return self._forward(x, True, state)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SSMState:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch, self.conv_dim, self.cfg.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.nheads, self.headdim, self.N, device=device, dtype=state_dtype))

    def step(self, x_t: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        conv_state, h = state
        z, xBC, dt = self._split(self.in_proj(x_t))  # (B, ·)
        xBC, conv_state = causal_conv_step(conv_state, xBC, self.conv1d)
        x, B, C = F.silu(xBC).split([self.d_inner, self.N, self.N], dim=-1)
        shape = (-1, self.nheads, self.headdim)  # (B, H, P)
        # softplus(dt + bias), the state update, C·h, D skip and y·SiLU(z): one kernel on CUDA
        y, h = ssd_step(h, x.reshape(shape), dt, -torch.exp(self.A_log.to(h.dtype)), B[:, None], C[:, None],
                        D=self.D, z=z.reshape(shape), dt_bias=self.dt_bias, dt_softplus=True)
        y = self.out_proj(self.norm(y.reshape(-1, self.d_inner).to(x_t.dtype)))  # gate already applied
        return y, (conv_state, h)

    def fixed_state_bytes(self, dtype_bytes: int = 2) -> int:
        conv = self.conv_dim * (self.cfg.d_conv - 1)
        ssm = self.nheads * self.headdim * self.N
        return (conv + ssm) * dtype_bytes
