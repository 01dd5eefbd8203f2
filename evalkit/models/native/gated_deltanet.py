"""Gated DeltaNet mixer (Yang, Kautz & Hatamizadeh 2024; the linear layers of Qwen3-Next), laid
out like fla's ``GatedDeltaNet`` layer and with Mamba-2's head geometry.

in_proj → (q, k, v, z, a, b); causal depthwise conv + SiLU over (q, k, v); q, k L2-normalised
per head (q also scaled by N^-1/2); decay g = −exp(A_log) · softplus(a + dt_bias) (Mamba-2's
parameterisation, α = exp(g)); write rate β = sigmoid(b); the gated delta rule
(``evalkit.kernels.gated_delta``); per-head RMSNorm of the output gated by SiLU(z); out_proj.

Heads: nheads = d_inner / headdim value heads of width P = headdim, each with its own keys and
queries of width N = d_state, so the state per layer is nheads · P · N — the same as a Mamba-2
layer of the same config. At equal state, the two differ by the delta rule (rewrite one key's
value instead of only adding) and per-head keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.kernels.gated_delta import gated_delta_rule, gated_delta_step
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mamba import causal_conv, causal_conv_step
from evalkit.models.native.mixer import (
    Mixer,
    init_dt_bias_,
    init_normal_,
    init_uniform_,
    out_proj_std,
    register_mixer,
)
from evalkit.models.native.mlp import RMSNorm

# Decode state: (conv_state (B, 2·H·N + d_inner, d_conv-1), S (B, H, P, N) in fp32 / fp64).
GDNState = tuple[torch.Tensor, torch.Tensor]

# Longest chunk of the chunked rule. Its intra-chunk work grows with the chunk (C × C matrices and
# their inverse) while the heads are small (N = 16, P = 32 in the zoo), so chunks of 32 run ~1.5x
# faster on CPU than 64 (benchmarks/mixers.py). The chunk changes rounding only, not the result.
MAX_CHUNK = 32


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / ||x|| over the last dim (eps inside the root, as fla does)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


@register_mixer("gated_deltanet")
class GatedDeltaNet(Mixer):
    """Gated DeltaNet block: short conv, L2-normed q/k, gated delta rule, gated RMSNorm."""

    is_attention = False

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.d_inner, self.N, self.P = cfg.d_inner, cfg.d_state, cfg.headdim
        self.nheads = cfg.d_inner // cfg.headdim
        self.key_dim = self.nheads * self.N
        self.conv_dim = 2 * self.key_dim + self.d_inner  # q, k, v go through the conv
        self.in_proj = nn.Linear(cfg.d_model, self.conv_dim + self.d_inner + 2 * self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.norm = RMSNorm(self.P, cfg.norm_eps)  # per head, weights shared by the heads
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)

    @classmethod
    def check_config(cls, cfg: NativeConfig) -> None:
        if cfg.d_inner % cfg.headdim:
            raise ValueError(f"headdim ({cfg.headdim}) must divide d_inner = expand * d_model "
                             f"({cfg.d_inner}) for gated_deltanet layers")

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.in_proj.weight, 0.02, gen)
        bound = self.cfg.d_conv ** -0.5  # PyTorch's default conv init, fan_in = d_conv
        init_uniform_(self.conv1d.weight, -bound, bound, gen)
        a = torch.empty(self.nheads)
        init_uniform_(a, 1.0, 16.0, gen)  # A in [1, 16], as Mamba-2
        init_dt_bias_(self.dt_bias, gen)
        with torch.no_grad():
            self.A_log.copy_(torch.log(a))
            self.norm.weight.fill_(1.0)
        init_normal_(self.out_proj.weight, out_proj_std(self.cfg), gen)

    def _split(self, proj: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(..., d_in_proj) → qkv (..., conv_dim), z (..., d_inner), a, b (..., nheads)."""
        return proj.split([self.conv_dim, self.d_inner, self.nheads, self.nheads], dim=-1)

    def _rule_inputs(self, qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ct: torch.dtype):
        """After the conv: qkv (..., conv_dim), a, b (..., H) → q, k (..., H, N) normalised,
        v (..., H, P), g, beta (..., H), all in compute dtype ``ct``."""
        q, k, v = F.silu(qkv.to(ct)).split([self.key_dim, self.key_dim, self.d_inner], dim=-1)
        q = l2norm(q.unflatten(-1, (self.nheads, self.N))) * self.N ** -0.5
        k = l2norm(k.unflatten(-1, (self.nheads, self.N)))
        v = v.unflatten(-1, (self.nheads, self.P))
        g = -torch.exp(self.A_log.to(ct)) * F.softplus(a.to(ct) + self.dt_bias.to(ct))
        return q, k, v, g, torch.sigmoid(b.to(ct))

    def _gate_out(self, o: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """out_proj(norm(o) * silu(z)) per head. o: (..., H, P), z: (..., d_inner)."""
        y = self.norm(o) * F.silu(z.to(o.dtype)).unflatten(-1, (self.nheads, self.P))
        return self.out_proj(y.flatten(-2).to(dtype))

    def _forward(self, u: torch.Tensor, return_state: bool, state: GDNState | None = None):
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32
        qkv, z, a, b = self._split(self.in_proj(u))  # (B, L, ·)
        qkv, conv_state = causal_conv(qkv.transpose(1, 2), self.conv1d, None if state is None else state[0])
        q, k, v, g, beta = self._rule_inputs(qkv.transpose(1, 2), a, b, ct)
        out = gated_delta_rule(q, k, v, g, beta, min(self.cfg.chunk_size, MAX_CHUNK),
                               initial_state=None if state is None else state[1].to(ct),
                               return_final_state=return_state)
        o, S = out if return_state else (out, None)
        y = self._gate_out(o, z, u.dtype)  # (B, L, D)
        if not return_state:
            return y
        return y, (conv_state, S)

    def _continue(self, x: torch.Tensor, state: GDNState) -> tuple[torch.Tensor, GDNState]:
        return self._forward(x, True, state)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> GDNState:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch, self.conv_dim, self.cfg.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.nheads, self.P, self.N, device=device, dtype=state_dtype))

    def step(self, x_t: torch.Tensor, state: GDNState) -> tuple[torch.Tensor, GDNState]:
        conv_state, S = state
        qkv, z, a, b = self._split(self.in_proj(x_t))  # (B, ·)
        qkv, conv_state = causal_conv_step(conv_state, qkv, self.conv1d)
        q, k, v, g, beta = self._rule_inputs(qkv, a, b, S.dtype)
        o, S = gated_delta_step(q, k, v, g, beta, S)  # (B, H, P)
        return self._gate_out(o, z, x_t.dtype), (conv_state, S)

    def fixed_state_bytes(self, dtype_bytes: int = 2) -> int:
        conv = self.conv_dim * (self.cfg.d_conv - 1)
        return (conv + self.nheads * self.P * self.N) * dtype_bytes
