"""NativeConfig: the one dataclass that describes a native transformer / Mamba / hybrid LM.

Loading is strict (nanoGPT-style): an unknown key, a wrong type or an out-of-range value is a
``ValueError`` naming the field. The hybrid layout is stored as explicit ``attn_layer_idx``
(as in mamba_ssm); ``attention_fraction`` + ``placement`` are a shorthand that
``resolved()`` turns into indices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evalkit.registry import closest, did_you_mean

PLACEMENTS = ("dispersed", "start", "middle", "end")

# Named sizes (torchtitan-style flavors); a dict may say `flavor: small` and override fields.
FLAVORS: dict[str, dict[str, Any]] = {
    # tiny, for CPU tests
    "debug": dict(vocab_size=512, d_model=32, n_layers=2, n_heads=2, d_state=8, headdim=16,
                  chunk_size=16, max_context=4096),
    # the shipped size of the native zoo: Zoology-scale (d_model 64), fast enough that the main
    # command runs in under a minute on a 2-core CPU
    "small": dict(vocab_size=512, d_model=64, n_layers=4, n_heads=2, d_state=16, headdim=32,
                  chunk_size=64, d_ff=0),
    # a wider variant for GPU sweeps
    "base": dict(vocab_size=512, d_model=256, n_layers=8, n_heads=4, d_state=16, headdim=64,
                 chunk_size=64, d_ff=0),
}


@dataclass(frozen=True, kw_only=True)
class NativeConfig:
    vocab_size: int = 512  # token vocabulary (synthetic task vocab fits easily)
    d_model: int = 128  # residual stream width D
    n_layers: int = 4  # number of blocks (mixer + optional MLP)
    ssm: str = "mamba2"  # mixer of the non-attention layers: "mamba" | "mamba2" | any registered
    attention_fraction: float = 0.0  # share of attention layers: 0 → pure SSM, 1 → transformer
    placement: str = "dispersed"  # where attention layers go: dispersed | start | middle | end
    attn_layer_idx: tuple[int, ...] | None = None  # explicit attention layers; wins over fraction
    n_heads: int = 4  # attention heads (head dim = d_model // n_heads, must be even for RoPE)
    rope_theta: float = 10000.0  # RoPE base
    d_state: int = 16  # SSM state size N
    d_conv: int = 4  # causal depthwise conv width of the SSM mixers
    expand: int = 2  # SSM inner width d_inner = expand * d_model
    headdim: int = 32  # Mamba-2 head dim P (nheads = d_inner // headdim)
    chunk_size: int = 64  # chunk length of the parallel scans
    d_ff: int = 0  # SwiGLU MLP hidden size after each mixer; 0 = no MLP
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # output head shares the embedding matrix
    max_context: int = 16384  # longest sequence the model accepts; longer → ContextLengthError

    def __post_init__(self) -> None:
        self._validate()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NativeConfig:
        """Build a config from plain data (YAML / JSON), strictly: unknown keys, wrong types and
        out-of-range values raise ValueError naming the field. ``flavor: NAME`` starts from
        ``FLAVORS[NAME]`` and the other keys override it."""
        d = dict(d)
        values: dict[str, Any] = {}
        if "flavor" in d:
            flavor = d.pop("flavor")
            if flavor not in FLAVORS:
                raise ValueError(f"unknown flavor '{flavor}'{did_you_mean(str(flavor), tuple(FLAVORS))}")
            values.update(FLAVORS[flavor])
        names = [f.name for f in dataclasses.fields(cls)]
        for key, value in d.items():
            if key not in names:
                best = closest(str(key), names + ["flavor"])
                hint = f"; did you mean '{best}'?" if best else ""
                raise ValueError(f"unknown field '{key}'{hint}")
            values[key] = _check_type(key, value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the resolved config (explicit attn_layer_idx, as a list)."""
        out = dataclasses.asdict(self.resolved())
        out["attn_layer_idx"] = list(out["attn_layer_idx"])
        return out

    # ---- hybrid layout ------------------------------------------------------------------
    def resolved(self) -> NativeConfig:
        """The same config with ``attn_layer_idx`` filled in and ``attention_fraction`` set to
        the effective share len(idx) / n_layers (so explicit indices win over the fraction, and
        a fraction that does not divide n_layers reports what was actually built)."""
        idx = self._attn_idx()
        return dataclasses.replace(self, attn_layer_idx=idx, attention_fraction=len(idx) / self.n_layers)

    def layer_types(self) -> tuple[str, ...]:
        """Mixer name of every layer, e.g. ("mamba2", "attention", "mamba2", "mamba2")."""
        idx = set(self._attn_idx())
        return tuple("attention" if i in idx else self.ssm for i in range(self.n_layers))

    def _attn_idx(self) -> tuple[int, ...]:
        if self.attn_layer_idx is not None:
            return tuple(sorted(self.attn_layer_idx))
        return attention_layers(self.n_layers, self.attention_fraction, self.placement)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    # ---- validation ---------------------------------------------------------------------
    def _validate(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "d_state", "d_conv", "expand",
                    "headdim", "chunk_size", "max_context")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_ff < 0:
            raise ValueError(f"d_ff must be >= 0 (0 = no MLP), got {self.d_ff}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError("rope_theta and norm_eps must be > 0")
        if not 0.0 <= self.attention_fraction <= 1.0:
            raise ValueError(f"attention_fraction must be in [0, 1], got {self.attention_fraction}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got '{self.placement}'"
                             f"{did_you_mean(self.placement, PLACEMENTS)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads}) into an even head dim (RoPE)")
        if self.attn_layer_idx is not None:
            idx = self.attn_layer_idx
            bad = [i for i in idx if not 0 <= i < self.n_layers]
            if bad or len(set(idx)) != len(idx):
                raise ValueError(f"attn_layer_idx must be distinct indices in [0, {self.n_layers}), "
                                 f"got {list(idx)}")
        from evalkit.models.native.mixer import MIXERS  # late: mixers import this module

        if self.ssm not in MIXERS or MIXERS.get(self.ssm).is_attention:
            ssms = tuple(n for n in MIXERS.names() if not MIXERS.get(n).is_attention)
            raise ValueError(f"ssm must be a registered non-attention mixer, got '{self.ssm}'"
                             f"{did_you_mean(self.ssm, ssms)}")
        if "mamba2" in self.layer_types() and self.d_inner % self.headdim:
            raise ValueError(f"headdim ({self.headdim}) must divide d_inner = expand * d_model "
                             f"({self.d_inner}) for mamba2 layers")


def attention_layers(n_layers: int, fraction: float, placement: str) -> tuple[int, ...]:
    """Indices of the attention layers for a fraction and a placement rule.

    k = round-half-up(fraction * n_layers), at least 1 when fraction > 0. ``dispersed`` spreads
    them evenly over the interior layers 1..n-2 (so the first and last layers stay SSM) when
    k <= n-2, else over all layers; ``start`` / ``end`` take the first / last k; ``middle`` a
    centred block.
    """
    n = n_layers
    if fraction <= 0:
        return ()
    k = min(n, max(1, math.floor(fraction * n + 0.5)))
    if placement == "start":
        return tuple(range(k))
    if placement == "end":
        return tuple(range(n - k, n))
    if placement == "middle":
        s = (n - k) // 2
        return tuple(range(s, s + k))
    if k <= n - 2:
        return tuple(1 + math.floor((j + 0.5) * (n - 2) / k) for j in range(k))
    return tuple(math.floor((j + 0.5) * n / k) for j in range(k))


def _check_type(name: str, value: Any) -> Any:
    """Check (and lightly normalise) one field's value against its declared type."""
    ftype = {f.name: f.type for f in dataclasses.fields(NativeConfig)}[name]
    if name == "attn_layer_idx":
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in value):
            return tuple(value)
        raise ValueError(f"attn_layer_idx must be a list of ints or null, got {value!r}")
    if ftype == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ftype == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif ftype == "bool":
        ok = isinstance(value, bool)
    else:  # str
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{name} must be {ftype}, got {type(value).__name__} {value!r}")
    return value
