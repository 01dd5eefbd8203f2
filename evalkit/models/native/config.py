"""NativeConfig: the one dataclass that describes a native transformer / SSM / hybrid LM.

Loading is strict (nanoGPT-style): an unknown key, a wrong type or an out-of-range value is a
``ValueError`` naming the field. A layout comes one of two ways:

- ``ssm`` (the mixer of the non-attention layers) + ``attention`` (the mixer of the attention
  layers: full ``attention`` or sliding-window ``swa``) + ``attention_fraction`` and ``placement``,
  a shorthand that ``resolved()`` turns into explicit ``attn_layer_idx`` (as in mamba_ssm);
- ``pattern``: the mixer of every layer, as letters (``"MMMA MMMA"``, see ``PATTERN_LETTERS``)
  or a list of registered mixer names. It wins over the shorthand; ``resolved()`` derives
  ``attn_layer_idx`` and ``attention_fraction`` from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evalkit.registry import closest, did_you_mean

PLACEMENTS = ("dispersed", "start", "middle", "end")

# One letter per built-in mixer for ``pattern: "MMMA MMMA"`` (spaces are ignored). Mixers from
# plugins have no letter; name them in a list pattern instead.
PATTERN_LETTERS: dict[str, str] = {
    "A": "attention", "W": "swa", "M": "mamba2", "m": "mamba", "S": "s4d", "G": "gated_deltanet",
}

# Fields added after the first zoo was trained. ``to_dict`` leaves them out while they hold
# their default, so every older config (and with it every stored cell key) keeps its identity.
_LATER_FIELDS = ("attention", "window", "pattern", "pos_emb", "qkv_bias")
POS_EMBS = ("rope", "learned", "none")

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
    ssm: str = "mamba2"  # mixer of the non-attention layers: mamba | mamba2 | s4d | gated_deltanet | …
    attention: str = "attention"  # mixer of the attention layers: attention (full) | swa (sliding window)
    attention_fraction: float = 0.0  # share of attention layers: 0 → pure SSM, 1 → transformer
    placement: str = "dispersed"  # where attention layers go: dispersed | start | middle | end
    attn_layer_idx: tuple[int, ...] | None = None  # explicit attention layers; wins over fraction
    pattern: tuple[str, ...] | None = None  # explicit mixer per layer; wins over all of the above
    window: int = 0  # swa: each query sees the last `window` tokens, itself included (0 = unset)
    n_heads: int = 4  # attention heads (head dim = d_model // n_heads, must be even for RoPE)
    rope_theta: float = 10000.0  # RoPE base
    pos_emb: str = "rope"  # positions: rope (rotary, in attention) | learned (absolute, added to the embedding) | none
    qkv_bias: bool = False  # attention's q/k/v projection has a bias (as in Zoology's attention baseline)
    d_state: int = 16  # SSM state size N (s4d: N/2 complex modes; gated_deltanet: key dim per head)
    d_conv: int = 4  # causal depthwise conv width of the SSM mixers
    expand: int = 2  # SSM inner width d_inner = expand * d_model
    headdim: int = 32  # Mamba-2 / gated_deltanet value head dim P (nheads = d_inner // headdim)
    chunk_size: int = 64  # chunk length of the parallel scans
    d_ff: int = 0  # SwiGLU MLP hidden size after each mixer; 0 = no MLP
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # output head shares the embedding matrix
    max_context: int = 16384  # longest sequence the model accepts; longer → ContextLengthError

    def __post_init__(self) -> None:
        if self.pattern is not None and not isinstance(self.pattern, tuple):  # str or list given
            object.__setattr__(self, "pattern", _check_type("pattern", self.pattern))
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
            if not isinstance(flavor, str) or flavor not in FLAVORS:
                raise ValueError(f"unknown flavor '{flavor}'{did_you_mean(str(flavor), tuple(FLAVORS))}")
            values.update(FLAVORS[flavor])
        names = [f.name for f in dataclasses.fields(cls)]
        for key, value in d.items():
            if key not in names:
                best = closest(str(key), names + ["flavor"])
                hint = f"; did you mean '{best}'?" if best else ""
                raise ValueError(f"unknown field '{key}'{hint}")
            values[key] = _check_type(key, value)
        if values.get("pattern") is not None and "n_layers" not in d:
            values["n_layers"] = len(values["pattern"])  # the pattern says how many layers
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the resolved config (explicit attn_layer_idx, as a list). Fields
        added later (``_LATER_FIELDS``) appear only when they differ from their default."""
        out = dataclasses.asdict(self.resolved())
        out["attn_layer_idx"] = list(out["attn_layer_idx"])
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _LATER_FIELDS:
            if out[name] == defaults[name]:
                del out[name]
        if "pattern" in out:
            out["pattern"] = list(out["pattern"])
        return out

    # ---- hybrid layout ------------------------------------------------------------------
    def resolved(self) -> NativeConfig:
        """The same config with ``attn_layer_idx`` filled in and ``attention_fraction`` set to
        the effective share len(idx) / n_layers (so a pattern or explicit indices win over the
        fraction, and a fraction that does not divide n_layers reports what was actually built)."""
        idx = self._attn_idx()
        return dataclasses.replace(self, attn_layer_idx=idx, attention_fraction=len(idx) / self.n_layers)

    def layer_types(self) -> tuple[str, ...]:
        """Mixer name of every layer, e.g. ("mamba2", "attention", "mamba2", "mamba2")."""
        if self.pattern is not None:
            return self.pattern
        idx = set(self._attn_idx())
        return tuple(self.attention if i in idx else self.ssm for i in range(self.n_layers))

    def _attn_idx(self) -> tuple[int, ...]:
        if self.pattern is not None:
            return _pattern_attn_idx(self.pattern)
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
        if self.window < 0:
            raise ValueError(f"'window' must be >= 1 (0 = unset), got {self.window}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError("rope_theta and norm_eps must be > 0")
        if not 0.0 <= self.attention_fraction <= 1.0:
            raise ValueError(f"attention_fraction must be in [0, 1], got {self.attention_fraction}")
        if self.pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb must be one of {POS_EMBS}, got '{self.pos_emb}'{did_you_mean(self.pos_emb, POS_EMBS)}")
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
        if self.attention not in MIXERS or not MIXERS.get(self.attention).is_attention:
            attns = tuple(n for n in MIXERS.names() if MIXERS.get(n).is_attention)
            raise ValueError(f"'attention' must be a registered attention mixer, got '{self.attention}'"
                             f"{did_you_mean(self.attention, attns)}")
        if self.pattern is not None:
            self._validate_pattern(MIXERS.names())
        types = self.layer_types()
        if "mamba2" in types and self.d_inner % self.headdim:
            raise ValueError(f"headdim ({self.headdim}) must divide d_inner = expand * d_model "
                             f"({self.d_inner}) for mamba2 layers")
        for name in dict.fromkeys(types):
            MIXERS.get(name).check_config(self)

    def _validate_pattern(self, known: list[str]) -> None:
        """Every entry a registered mixer, one per layer, and no contradicting attn_layer_idx."""
        for i, name in enumerate(self.pattern):
            if name not in known:
                raise ValueError(f"'pattern' names an unknown mixer '{name}' at layer {i}"
                                 f"{did_you_mean(name, known)}")
        if len(self.pattern) != self.n_layers:
            raise ValueError(f"'pattern' has {len(self.pattern)} layers but n_layers is {self.n_layers}")
        idx = _pattern_attn_idx(self.pattern)
        if self.attn_layer_idx is not None and tuple(sorted(self.attn_layer_idx)) != idx:
            raise ValueError(f"'attn_layer_idx' {list(self.attn_layer_idx)} disagrees with the "
                             f"attention layers of 'pattern' {list(idx)}")


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


def _pattern_attn_idx(pattern: tuple[str, ...]) -> tuple[int, ...]:
    """Indices of the layers of a pattern whose mixer is an attention mixer (full or swa)."""
    from evalkit.models.native.mixer import MIXERS

    return tuple(i for i, name in enumerate(pattern) if name in MIXERS and MIXERS.get(name).is_attention)


def parse_pattern(value: Any) -> tuple[str, ...]:
    """A layer pattern → mixer names: ``"MMMA MMMA"`` (letters of ``PATTERN_LETTERS``, spaces
    ignored) or a list of mixer names. Names are checked against the registry later, in
    ``NativeConfig._validate``; here only the shape and the letters."""
    if isinstance(value, str):
        names = []
        for pos, ch in enumerate(value):
            if ch.isspace():
                continue
            if ch not in PATTERN_LETTERS:
                letters = ", ".join(f"{k}={v}" for k, v in PATTERN_LETTERS.items())
                swapped = ch.swapcase() if ch.swapcase() in PATTERN_LETTERS else None
                hint = f"; did you mean '{swapped}' ({PATTERN_LETTERS[swapped]})?" if swapped else ""
                raise ValueError(f"'pattern' has an unknown mixer letter '{ch}' at character {pos}{hint} "
                                 f"(letters: {letters}; or give a list of mixer names)")
            names.append(PATTERN_LETTERS[ch])
        if not names:
            raise ValueError("'pattern' is empty")
        return tuple(names)
    if isinstance(value, (list, tuple)) and value and all(isinstance(n, str) for n in value):
        return tuple(value)
    raise ValueError(f"'pattern' must be a string of mixer letters or a non-empty list of mixer names, "
                     f"got {value!r}")


def _check_type(name: str, value: Any) -> Any:
    """Check (and lightly normalise) one field's value against its declared type."""
    ftype = {f.name: f.type for f in dataclasses.fields(NativeConfig)}[name]
    if name == "pattern":
        return None if value is None else parse_pattern(value)
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
