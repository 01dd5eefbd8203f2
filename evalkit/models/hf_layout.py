"""What a transformers config says about a model's layers: mixer per layer, attention fraction,
KV-cache bytes per token and fixed SSM-state bytes — the ``describe()`` keys native models report,
so HF and native models sit on the same recall-vs-cost axes.

Works on a ``config.json`` dict or a ``PretrainedConfig`` (fields read by name, so no import of
transformers is needed for planning). Mixer names follow the native ones: ``attention``,
``mamba`` (Mamba-1 selective scan), ``mamba2`` (SSD), plus ``conv`` (LFM2's short convolutions),
``linear_attention`` (Qwen3-Next's gated DeltaNet) and ``mlp`` (a layer with no sequence mixer,
as in Nemotron-H's pattern). A parallel hybrid layer (Falcon-H1, and Zamba2's layers that call the
shared attention block) is ``attention+mamba2``.

Bytes are at bf16 (2 bytes), as the native mixers count them: attention keeps one K and one V
vector per KV head per token; Mamba-1 keeps ``d_inner·(d_conv − 1 + d_state)``; Mamba-2 keeps
``conv_dim·(d_conv − 1) + heads·head_dim·d_state`` with ``conv_dim = d_inner + 2·groups·d_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DTYPE_BYTES = 2
_SSM_FREE_KV = ("mamba", "mamba2", "conv", "linear_attention", "mlp")


def get(cfg: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` set (not None) in a config dict or object."""
    for n in names:
        v = cfg.get(n) if isinstance(cfg, Mapping) else getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def layer_mixers(cfg: Any) -> list[str]:
    """The sequence mixer of every layer, from the family's layout fields."""
    mt = get(cfg, "model_type", default="")
    n = int(get(cfg, "num_hidden_layers", "n_layer", "num_layers", default=0))
    if mt in ("mamba", "falcon_mamba"):
        return ["mamba"] * n
    if mt == "mamba2":
        return ["mamba2"] * n
    if mt == "jamba":
        period, offset = int(get(cfg, "attn_layer_period", default=8)), int(get(cfg, "attn_layer_offset", default=4))
        return ["attention" if i % period == offset else "mamba" for i in range(n)]
    if mt in ("zamba", "zamba2"):
        ssm = "mamba" if mt == "zamba" else "mamba2"
        types = get(cfg, "layers_block_type") or [ssm] * n
        return [f"attention+{ssm}" if t == "hybrid" else ssm for t in types]
    if mt == "falcon_h1":
        return ["attention+mamba2"] * n
    if mt == "bamba":
        idx = set(get(cfg, "attn_layer_indices", default=[]) or [])
        return ["attention" if i in idx else "mamba2" for i in range(n)]
    if mt == "nemotron_h":
        pattern = get(cfg, "hybrid_override_pattern")
        if pattern:
            letters = {"M": "mamba2", "*": "attention", "-": "mlp", "E": "mlp"}
            return [letters[c] for c in pattern]
        return [{"mamba": "mamba2", "attention": "attention"}.get(t, "mlp") for t in get(cfg, "layers_block_type")]
    types = get(cfg, "layer_types", "layers_block_type")
    if types:  # granitemoehybrid, lfm2, qwen3_next, gemma-style sliding/full attention
        return [_normalise(str(t), mt) for t in types]
    return ["attention"] * n


def _normalise(t: str, model_type: str) -> str:
    if t == "mamba":
        return "mamba2" if model_type in ("granitemoehybrid",) else "mamba"
    if t in ("linear_attention", "conv", "mlp", "mamba2"):
        return t
    return "attention"  # full_attention, sliding_attention, attention, hybrid …


def has_attention(mixer: str) -> bool:
    return mixer == "attention" or mixer.startswith("attention+")


def attention_fraction(mixers: list[str]) -> float:
    """Share of sequence-mixing layers that have attention (MLP-only layers do not count)."""
    mixing = [m for m in mixers if m != "mlp"]
    return sum(has_attention(m) for m in mixing) / len(mixing) if mixing else 0.0


def _attention_kv(cfg: Any) -> int:
    heads = int(get(cfg, "num_attention_heads", "n_head", default=1))
    kv_heads = int(get(cfg, "num_key_value_heads", default=heads))
    hidden = int(get(cfg, "hidden_size", "d_model"))
    if get(cfg, "model_type") == "zamba2":  # attention over [hidden, embeddings]: width 2·hidden
        head_dim = int(get(cfg, "attention_head_dim", default=2 * hidden // heads))
    else:
        head_dim = int(get(cfg, "head_dim", "attention_head_dim", default=hidden // heads))
    return 2 * kv_heads * head_dim * DTYPE_BYTES


def _mamba1_state(cfg: Any) -> int:
    hidden = int(get(cfg, "hidden_size"))
    if get(cfg, "mamba_expand") is not None:
        d_inner = int(get(cfg, "mamba_expand")) * hidden
    else:
        d_inner = int(get(cfg, "intermediate_size", default=int(get(cfg, "expand", default=2)) * hidden))
    d_state = int(get(cfg, "mamba_d_state", "state_size", "ssm_state_size", default=16))
    d_conv = int(get(cfg, "mamba_d_conv", "conv_kernel", default=4))
    return d_inner * (d_conv - 1 + d_state) * DTYPE_BYTES


def _mamba2_state(cfg: Any) -> int:
    heads = int(get(cfg, "mamba_n_heads", "n_mamba_heads", "mamba_num_heads", "num_heads"))
    head_dim = int(get(cfg, "mamba_d_head", "mamba_headdim", "mamba_head_dim", "head_dim"))
    d_state = int(get(cfg, "mamba_d_state", "ssm_state_size", "state_size"))
    d_conv = int(get(cfg, "mamba_d_conv", "conv_kernel", default=4))
    groups = int(get(cfg, "mamba_n_groups", "mamba_ngroups", "n_groups", default=1))
    d_inner = heads * head_dim
    conv_dim = d_inner + 2 * groups * d_state
    return (conv_dim * (d_conv - 1) + heads * head_dim * d_state) * DTYPE_BYTES


def state_bytes(cfg: Any, mixers: list[str]) -> tuple[int, int | None]:
    """(KV-cache bytes per token, fixed state bytes) summed over layers. Fixed state is None when
    a layer's mixer has no formula here (conv, linear attention): unknown, not zero."""
    kv = sum(_attention_kv(cfg) for m in mixers if has_attention(m))
    fixed: int | None = 0
    for m in mixers:
        ssm = m.split("+")[-1]
        if ssm == "mamba":
            fixed += _mamba1_state(cfg)
        elif ssm == "mamba2":
            fixed += _mamba2_state(cfg)
        elif ssm in ("conv", "linear_attention"):
            return kv, None
    return kv, fixed


def max_context(cfg: Any, mixers: list[str]) -> int | None:
    """``max_position_embeddings`` for models with attention; None for pure SSMs (no limit)."""
    if not any(has_attention(m) for m in mixers):
        return None
    v = get(cfg, "max_position_embeddings", "n_positions")
    return int(v) if v else None


def family_kind(mixers: list[str]) -> str:
    frac = attention_fraction(mixers)
    return "transformer" if frac >= 1 and all(m == "attention" for m in mixers if m != "mlp") else (
        "ssm" if frac == 0 else "hybrid")


def describe_config(cfg: Any) -> dict[str, Any]:
    """The config-derived part of ``describe()`` (everything but the parameter count)."""
    mixers = layer_mixers(cfg)
    kv, fixed = state_bytes(cfg, mixers)
    mt = get(cfg, "model_type", default="?")
    return {
        "architecture": f"{mt} ({family_kind(mixers)})",
        "model_type": mt,
        "layer_types": mixers,
        "attn_layer_idx": [i for i, m in enumerate(mixers) if has_attention(m)],
        "attention_fraction": attention_fraction(mixers),
        "kv_bytes_per_token": kv,
        "fixed_state_bytes": fixed,
        "d_model": get(cfg, "hidden_size", "d_model"),
        "n_layers": len(mixers),
        "d_state": get(cfg, "mamba_d_state", "ssm_state_size", "state_size"),
        "vocab_size": get(cfg, "vocab_size"),
        "max_context": max_context(cfg, mixers),
    }
