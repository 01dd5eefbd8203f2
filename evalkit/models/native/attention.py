"""Causal multi-head attention with rotary position embeddings (RoPE) and a KV-cache step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mixer import Mixer, init_normal_, out_proj_std, register_mixer

# Backends for decode steps: not cuDNN, which PyTorch prefers for bf16 / fp16 on Hopper but plans
# anew for every key length, i.e. at every step (measured on the H100: 40-70 ms per decoded token
# at any context length, vs ~1 ms with flash / efficient attention).
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Decode state of full attention: (k, v, pos, cache): k, v (B, H, pos, hd) are views of the first
# pos positions of the cache's buffers. (Sliding-window attention keeps (k tail, v tail, pos).)
KVState = tuple


class KVCache:
    """Keys and values of one sequence for decoding, in (B, H, capacity, hd) buffers whose first
    ``filled`` positions are written.

    Steps and continued prefills write their positions in place, so a decode step costs reading
    the cache, not copying it (``torch.cat`` per token would copy all of it and briefly hold it
    twice, which does not fit at a million tokens). Full buffers grow with a small headroom
    (``max(256, n / 64)`` positions; a chunked prefill sizes them for the whole prompt at its first
    piece, as reallocating 4 GiB buffers piece by piece fragments the GPU allocator). States stay values: extending a state whose next positions
    another state already wrote (a branch, e.g. two continuations of one prompt) copies its prefix
    into a new cache first.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int) -> None:
        B, H, T, hd = k.shape
        self.k = k.new_empty(B, H, capacity, hd)
        self.v = v.new_empty(B, H, capacity, hd)
        self.k[:, :, :T] = k
        self.v[:, :, :T] = v
        self.filled = T

    @staticmethod
    def headroom(n: int) -> int:
        return n + max(256, n // 64)

    @classmethod
    def start(cls, k: torch.Tensor, v: torch.Tensor, total: int = 0) -> KVState:
        """The state after a first prefill with keys / values k, v: (B, H, T, hd); ``total``: the
        length the sequence will reach (chunked prefill), so the buffers are allocated once."""
        T = k.shape[2]
        cache = cls(k, v, cls.headroom(max(T, total)))
        return cache.k[:, :, :T], cache.v[:, :, :T], T, cache

    def extend(self, pos: int, k: torch.Tensor, v: torch.Tensor, total: int = 0) -> KVState:
        """The state after writing k, v (B, H, n, hd) at positions pos .. pos + n - 1 (``total``:
        the length the sequence will reach, when known)."""
        n, cache = k.shape[2], self
        if pos != self.filled or pos + n > self.k.shape[2]:  # a branch, or full: a new buffer
            cache = KVCache(self.k[:, :, :pos], self.v[:, :, :pos], self.headroom(max(pos + n, total)))
        cache.k[:, :, pos:pos + n] = k
        cache.v[:, :, pos:pos + n] = v
        cache.filled = pos + n
        return cache.k[:, :, :pos + n], cache.v[:, :, :pos + n], pos + n, cache


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
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, L, hd)
        if self.cfg.pos_emb != "rope":  # learned absolute positions (added to the embedding) or none
            return q, k, v
        return rope(q, start, self.cfg.rope_theta), rope(k, start, self.cfg.rope_theta), v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, H, L, hd = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, L, H * hd))  # (B, L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, 0)
        return self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def prefill(self, x: torch.Tensor, state: KVState | None = None, total: int = 0) -> tuple[torch.Tensor, KVState]:
        if state is None:
            q, k, v = self._qkv(x, 0)
            y = self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True))
            return y, KVCache.start(k, v, total)
        # continued (chunked) prefill: the new queries see the whole cache and, causally, each other
        from torch.nn.attention.bias import causal_lower_right  # lazy: it imports triton (see tests/conftest.py)

        *_, pos, cache = state
        q, k, v = self._qkv(x, pos)  # (B, H, L, hd)
        state = cache.extend(pos, k, v, total)  # k_all, v_all: (B, H, pos + L, hd)
        k_all, v_all = state[0], state[1]
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=causal_lower_right(q.shape[2], k_all.shape[2]))
        return self._out(y), state

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVState:
        empty = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVCache.start(empty, empty)

    def step(self, x_t: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        *_, pos, cache = state
        q, k, v = self._qkv(x_t[:, None], pos)  # (B, H, 1, hd)
        state = cache.extend(pos, k, v)  # k, v of positions 0 .. pos: (B, H, pos + 1, hd)
        with sdpa_kernel(DECODE_BACKENDS):
            y = F.scaled_dot_product_attention(q, state[0], state[1])  # the last token sees all
        return self._out(y)[:, 0], state

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.qkv.weight, 0.02, gen)
        init_normal_(self.out_proj.weight, out_proj_std(self.cfg), gen)
        if self.qkv.bias is not None:
            with torch.no_grad():
                self.qkv.bias.zero_()

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.cfg.d_model * dtype_bytes  # one K and one V vector per token
