"""Mamba-1 mixer (Gu & Dao, 2023), following mamba_ssm's ``mamba_simple.Mamba``.

in_proj → (x, z); x → causal depthwise conv + SiLU → x_proj → (Δ low-rank, B, C); Δ → dt_proj;
selective scan with per-(channel, state) decay A = -exp(A_log); y * SiLU(z) → out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.kernels.conv1d import causal_conv1d, causal_conv1d_ref
from evalkit.kernels.selective_scan import selective_scan, selective_scan_step
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mixer import (Mixer, init_dt_bias_, init_normal_, init_uniform_,
                                         out_proj_std, register_mixer)

# Decode state: (conv_state (B, d_inner, d_conv-1): the last inputs of the conv,
#                ssm_state (B, d_inner, N), kept in float32 / float64).
SSMState = tuple[torch.Tensor, torch.Tensor]


def causal_conv_step(conv_state: torch.Tensor, x_t: torch.Tensor, conv: nn.Conv1d
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a causal depthwise conv. conv_state: (B, C, K-1), x_t: (B, C) → (B, C)."""
    window = torch.cat([conv_state, x_t[:, :, None]], dim=2)  # (B, C, K)
    y = (window * conv.weight[:, 0]).sum(-1)  # (B, C)
    if conv.bias is not None:
        y = y + conv.bias
    return y, window[:, :, 1:]


def causal_conv(x: torch.Tensor, conv: nn.Conv1d, conv_state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over a sequence (before the activation), continuing from
    ``conv_state`` (B, C, K-1), the inputs that came before (zeros when None), always on the reference
    (the mixers whose activation follows at once call ``causal_conv1d``, which has a kernel).

    x: (B, C, L) → (y (B, C, L), the conv state after x (B, C, K-1))."""
    return causal_conv1d_ref(x, conv.weight[:, 0], conv.bias, conv_state, None, return_final_state=True)


def conv_silu(x: torch.Tensor, conv: nn.Conv1d, conv_state: torch.Tensor | None, return_state: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SiLU(causal depthwise conv(x)) continuing from ``conv_state`` (the kernel on CUDA: ``causal_conv1d``),
    and the conv state after x where ``return_state``. x: (B, C, L), any strides; y keeps x's layout."""
    out = causal_conv1d(x, conv.weight[:, 0], conv.bias, conv_state, "silu", return_final_state=return_state)
    return out if return_state else (out, None)


@register_mixer("mamba")
class Mamba(Mixer):
    """Mamba-1 selective SSM block (no MLP; the LM adds one if cfg.d_ff > 0)."""

    is_attention = False

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        d_inner, N = cfg.d_inner, cfg.d_state
        self.d_inner = d_inner
        self.dt_rank = math.ceil(cfg.d_model / 16)
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, N))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.in_proj.weight, 0.02, gen)
        bound = 1.0 / math.sqrt(self.cfg.d_conv)  # PyTorch's default conv init, fan_in = d_conv
        init_uniform_(self.conv1d.weight, -bound, bound, gen)
        init_uniform_(self.conv1d.bias, -bound, bound, gen)
        init_normal_(self.x_proj.weight, 0.02, gen)
        std = self.dt_rank ** -0.5
        init_uniform_(self.dt_proj.weight, -std, std, gen)
        init_dt_bias_(self.dt_proj.bias, gen)
        with torch.no_grad():  # S4D-real: A_n = -(n + 1)
            self.A_log.copy_(torch.log(torch.arange(1, self.cfg.d_state + 1, dtype=torch.float32))
                             .expand(self.d_inner, -1))
            self.D.fill_(1.0)
        init_normal_(self.out_proj.weight, out_proj_std(self.cfg), gen)

    def _scan_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (..., d_inner) after the conv → (Δ before bias (..., d_inner), B, C (..., N))."""
        N = self.cfg.d_state
        dt, B, C = self.x_proj(x).split([self.dt_rank, N, N], dim=-1)
        return dt @ self.dt_proj.weight.t(), B, C

    def _forward(self, u: torch.Tensor, return_state: bool, state: SSMState | None = None):
        # Channel-major (B, C, L) from the input projection on, as mamba_ssm computes it: every
        # operand of the scan is then contiguous along L, the layout the time-parallel scan kernel
        # reads coalesced (with (B, L, C) views it reads strided: kernels/NOTES.md, v6).
        N = self.cfg.d_state
        xz = torch.matmul(self.in_proj.weight, u.transpose(1, 2))  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each
        xc, conv_state = conv_silu(x, self.conv1d, None if state is None else state[0], return_state)  # (B, E, L)
        dt, B, C = torch.matmul(self.x_proj.weight, xc).split([self.dt_rank, N, N], dim=1)  # (B, ·, L)
        dt = torch.matmul(self.dt_proj.weight, dt)  # (B, d_inner, L), before the bias
        out = selective_scan(
            xc, dt, -torch.exp(self.A_log), B, C, D=self.D, z=z, delta_bias=self.dt_proj.bias,
            delta_softplus=True, initial_state=None if state is None else state[1],
            return_final_state=return_state, chunk_size=self.cfg.chunk_size,
        )
        y, ssm_state = out if return_state else (out, None)
        y = self.out_proj(y.transpose(1, 2))  # (B, L, D)
        if not return_state:
            return y
        return y, (conv_state, ssm_state)

    def _continue(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        return self._forward(x, True, state)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SSMState:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch, self.d_inner, self.cfg.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.d_inner, self.cfg.d_state, device=device, dtype=state_dtype))

    def step(self, x_t: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        conv_state, h = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, d_inner) each
        xc, conv_state = causal_conv_step(conv_state, x, self.conv1d)
        xc = F.silu(xc)
        dt, B, C = self._scan_inputs(xc)  # (B, d_inner), (B, N), (B, N)
        A = -torch.exp(self.A_log.to(h.dtype))  # (d_inner, N)
        # softplus(Δ + bias), the state update, C·h, D skip and SiLU(z) gate: one kernel on CUDA
        y, h = selective_scan_step(h, xc, dt, A, B, C, D=self.D, z=z, delta_bias=self.dt_proj.bias)
        return self.out_proj(y.to(x_t.dtype)), (conv_state, h)

    def fixed_state_bytes(self, dtype_bytes: int = 2) -> int:
        return self.d_inner * (self.cfg.d_conv - 1 + self.cfg.d_state) * dtype_bytes
