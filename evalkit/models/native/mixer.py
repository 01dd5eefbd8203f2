"""The Mixer interface every sequence mixer implements, and the registry of mixers.

A mixer maps (B, L, D) → (B, L, D) causally. It has two equivalent paths: a parallel one
(``forward`` / ``prefill``, for training and prompts) and a recurrent one (``step``, one token at
a time from a state), which tests check agree. It also reports what its state costs in memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from evalkit.models.native.config import NativeConfig
from evalkit.registry import Registry

MIXERS: Registry[type[Mixer]] = Registry("mixer")


def register_mixer(name: str):
    """Class decorator: make a Mixer subclass available as ``name`` in configs (``ssm: name``)."""
    return MIXERS.register(name)


class Mixer(nn.Module):
    """Base class of sequence mixers. Subclasses set ``is_attention`` and implement the methods."""

    is_attention: bool = False

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx

    @classmethod
    def check_config(cls, cfg: NativeConfig) -> None:
        """Raise ValueError naming the field when ``cfg`` cannot build this mixer (called by
        ``NativeConfig`` for every mixer its layers use, so bad specs fail at load time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Parallel path. x: (B, L, D) → (B, L, D); differentiable."""
        return self._forward(x, return_state=False)

    def prefill(self, x: torch.Tensor, state: Any = None, total: int = 0) -> tuple[torch.Tensor, Any]:
        """Parallel path that also returns the recurrent state after the last token.

        With ``state`` (what an earlier ``prefill`` or ``step`` returned) it continues from there:
        prefilling a prompt in pieces, each from the state the previous one left, gives the same
        outputs and final state as one prefill of the whole prompt (chunked prefill, which bounds
        the activation memory of very long prompts). ``total``: the length the sequence will
        reach, a hint for caches that preallocate (attention's KV cache); 0 = unknown."""
        if state is None:
            return self._forward(x, return_state=True)
        return self._continue(x, state)

    def _forward(self, x: torch.Tensor, return_state: bool) -> Any:
        """The parallel path both of the above share: y, or (y, state) with ``return_state``."""
        raise NotImplementedError

    def _continue(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """``prefill`` from a state. This default runs ``step`` token by token: exact for any mixer
        but slow; the built-in mixers override it with their parallel path."""
        ys = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1), state

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Any:
        """The state before any token (what ``step`` starts from)."""
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Recurrent path: one token x_t: (B, D) → (y_t: (B, D), new state)."""
        raise NotImplementedError

    def reset_parameters(self, gen: torch.Generator) -> None:
        """Re-initialise every parameter deterministically from ``gen`` (CPU generator)."""
        raise NotImplementedError

    # ---- memory cost ----------------------------------------------------------------------
    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of cache that grow with each token of context (attention's K and V)."""
        return 0

    def fixed_state_bytes(self, dtype_bytes: int = 2) -> int:
        """Bytes of recurrent state per sequence that do not grow with context (SSM state)."""
        return 0

    def state_bytes(self, seq_len: int, dtype_bytes: int = 2) -> int:
        """Total decode state per sequence after ``seq_len`` tokens."""
        return self.fixed_state_bytes(dtype_bytes) + seq_len * self.kv_bytes_per_token(dtype_bytes)


# ---- deterministic init helpers (all draw on CPU, then copy, so any device gets equal weights)
@torch.no_grad()
def init_normal_(p: torch.Tensor, std: float, gen: torch.Generator) -> None:
    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


@torch.no_grad()
def init_uniform_(p: torch.Tensor, low: float, high: float, gen: torch.Generator) -> None:
    p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * (high - low) + low)


def init_dt_bias_(p: torch.Tensor, gen: torch.Generator, dt_min: float = 1e-3,
                  dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
    """Mamba's Δ bias init: dt log-uniform in [dt_min, dt_max], stored as softplus⁻¹(dt)."""
    u = torch.rand(p.shape, generator=gen, dtype=torch.float64)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
    with torch.no_grad():
        p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus


def out_proj_std(cfg: NativeConfig) -> float:
    """GPT-2 style: residual-writing projections get std 0.02 / sqrt(2 * n_layers)."""
    return 0.02 / math.sqrt(2 * cfg.n_layers)
