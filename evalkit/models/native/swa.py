"""Causal sliding-window attention (as in Mistral, and the local layers of Samba-style hybrids).

Each query attends to the last ``cfg.window`` tokens, itself included: key j is visible from
query i iff 0 <= i - j < window. Projections, RoPE and scaling are attention.py's; only the mask
and the cache differ. The decode cache keeps the last ``window - 1`` keys and values (what the
next query can still see), so its size is bounded by the window: it counts as *fixed* state.

The parallel path is exact on every device: the sequence is cut into blocks of ``window``
queries, and each block attends to its own and the previous block's keys (2·window keys) under
a band mask, so the cost is O(L · window) rather than O(L²). Any L works (the tail is padded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evalkit.models.native.attention import Attention, KVState
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mixer import register_mixer


def band_mask(length: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """The dense (L, L) boolean mask of sliding-window attention: True where i - window < j <= i."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None]
    return (j <= i) & (j > i - window)


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Exact causal attention within a window. q, k, v: (B, H, L, hd) → (B, H, L, hd)."""
    Bsz, H, L, hd = q.shape
    if window >= L:  # every key is within reach: plain causal attention
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    W = window
    pad = (-L) % W
    nb = (L + pad) // W
    q, k, v = (F.pad(t, (0, 0, 0, pad)).reshape(Bsz * H, nb, W, hd) for t in (q, k, v))

    def with_previous(t: torch.Tensor) -> torch.Tensor:  # (BH, nb, W, hd) → (BH, nb, 2W, hd)
        return torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[:, :-1], t], dim=2)

    # query i of a block (position bW + i) sees key j of [previous block, own block] (position
    # (b-1)W + j) iff 0 <= W + i - j < W; block 0 has no previous block.
    i = torch.arange(W, device=q.device)[:, None]
    j = torch.arange(2 * W, device=q.device)[None]
    mask = ((j > i) & (j <= i + W)).expand(nb, W, 2 * W).clone()  # (nb, W, 2W)
    mask[0, :, :W] = False
    y = F.scaled_dot_product_attention(q, with_previous(k), with_previous(v), attn_mask=mask)
    return y.reshape(Bsz, H, nb * W, hd)[:, :, :L]


@register_mixer("swa")
class SlidingWindowAttention(Attention):
    """Attention (RoPE, same projections) restricted to the last ``cfg.window`` tokens."""

    is_attention = True

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.check_config(cfg)  # also when built outside NativeConfig's validation
        self.window = cfg.window
        self.keep = cfg.window - 1  # cached tokens between steps

    @classmethod
    def check_config(cls, cfg: NativeConfig) -> None:
        if cfg.window < 1:
            raise ValueError("swa layers need 'window' >= 1 (tokens each query sees, itself included)")
        if cfg.window > cfg.max_context:
            raise ValueError(f"'window' ({cfg.window}) is larger than max_context ({cfg.max_context})")

    def _tail(self, t: torch.Tensor) -> torch.Tensor:
        """The last ``keep`` positions of a cache (B, H, T, hd)."""
        return t[:, :, max(0, t.shape[2] - self.keep):]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, 0)
        return self._out(sliding_window_attention(q, k, v, self.window))

    def prefill(self, x: torch.Tensor, state: KVState | None = None, total: int = 0) -> tuple[torch.Tensor, KVState]:
        if state is None:
            q, k, v = self._qkv(x, 0)
            y = self._out(sliding_window_attention(q, k, v, self.window))
            return y, (self._tail(k), self._tail(v), x.shape[1])
        # continued prefill: the cached window - 1 keys go in front of the new ones; their query
        # rows (zeros) are computed and dropped, so the window logic stays sliding_window_attention's
        k_cache, v_cache, pos = state
        q, k, v = self._qkv(x, pos)  # (B, H, L, hd)
        k_all = torch.cat([k_cache, k.to(k_cache.dtype)], dim=2)  # (B, H, T + L, hd)
        v_all = torch.cat([v_cache, v.to(v_cache.dtype)], dim=2)
        T = k_cache.shape[2]
        q_all = torch.cat([q.new_zeros(*q.shape[:2], T, q.shape[3]), q], dim=2)
        y = sliding_window_attention(q_all, k_all, v_all, self.window)[:, :, T:]
        return self._out(y), (self._tail(k_all), self._tail(v_all), pos + x.shape[1])

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVState:
        empty = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return empty, empty.clone(), 0

    def step(self, x_t: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        k_cache, v_cache, pos = state
        q, k, v = self._qkv(x_t[:, None], pos)  # (B, H, 1, hd)
        k_all = torch.cat([k_cache, k.to(k_cache.dtype)], dim=2)  # (B, H, <= window, hd)
        v_all = torch.cat([v_cache, v.to(v_cache.dtype)], dim=2)
        y = F.scaled_dot_product_attention(q, k_all, v_all)  # the cache is exactly the window
        return self._out(y)[:, 0], (self._tail(k_all), self._tail(v_all), pos + 1)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 0  # the cache stops growing at the window

    def fixed_state_bytes(self, dtype_bytes: int = 2) -> int:
        return self.keep * 2 * self.cfg.d_model * dtype_bytes  # K and V of window - 1 tokens
