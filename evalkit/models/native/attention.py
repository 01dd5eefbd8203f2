"""Causal multi-head attention with rotary position embeddings (RoPE) and a KV-cache step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mixer import Mixer, init_normal_, out_proj_std, register_mixer

# Decode state: (k cache (B, H, T, hd), v cache (B, H, T, hd), position of the next token).
KVState = tuple[torch.Tensor, torch.Tensor, int]


def rope(x: torch.Tensor, start: int, theta: float) -> torch.Tensor:
    """Rotate x: (B, H, L, hd) by the angles of positions start..start+L-1 (rotate-half form)."""
    hd, L = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    pos = torch.arange(start, start + L, device=x.device, dtype=torch.float32)
    ang = pos[:, None] * inv_freq  # (L, hd/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, L, hd/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


@register_mixer("attention")
class Attention(Mixer):
    """Causal MHA with RoPE; ``step`` appends to a KV cache and attends to all of it."""

    is_attention = True

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, L, hd)
        return rope(q, start, self.cfg.rope_theta), rope(k, start, self.cfg.rope_theta), v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, H, L, hd = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, L, H * hd))  # (B, L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, 0)
        return self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, KVState]:
        q, k, v = self._qkv(x, 0)
        y = self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return y, (k, v, x.shape[1])

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVState:
        empty = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return empty, empty.clone(), 0

    def step(self, x_t: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        k_cache, v_cache, pos = state
        q, k, v = self._qkv(x_t[:, None], pos)  # (B, H, 1, hd)
        k_cache = torch.cat([k_cache, k.to(k_cache.dtype)], dim=2)  # (B, H, pos+1, hd)
        v_cache = torch.cat([v_cache, v.to(v_cache.dtype)], dim=2)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache)  # the last token sees all
        return self._out(y)[:, 0], (k_cache, v_cache, pos + 1)

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.qkv.weight, 0.02, gen)
        init_normal_(self.out_proj.weight, out_proj_std(self.cfg), gen)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.cfg.d_model * dtype_bytes  # one K and one V vector per token
