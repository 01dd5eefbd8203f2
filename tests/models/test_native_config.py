"""NativeConfig: strict loading, flavors, hybrid placement."""

from __future__ import annotations

import json

import pytest

from evalkit.models.native import FLAVORS, NativeConfig


@pytest.mark.parametrize("n,f,placement,want", [
    (4, 0.25, "dispersed", (2,)),
    (8, 0.25, "dispersed", (2, 5)),
    (8, 0.5, "dispersed", (1, 3, 4, 6)),
    (4, 0.75, "dispersed", (0, 2, 3)),  # k > n-2: spread over all layers
    (8, 0.25, "start", (0, 1)),
    (8, 0.25, "end", (6, 7)),
    (8, 0.25, "middle", (3, 4)),
    (7, 0.5, "middle", (1, 2, 3, 4)),  # k = round-half-up(3.5) = 4
    (4, 0.1, "dispersed", (2,)),  # any fraction > 0 gives at least one layer
    (4, 1.0, "dispersed", (0, 1, 2, 3)),
    (4, 0.0, "dispersed", ()),
], ids=lambda v: str(v))
def test_placement(n, f, placement, want):
    cfg = NativeConfig(n_layers=n, attention_fraction=f, placement=placement)
    r = cfg.resolved()
    assert r.attn_layer_idx == want
    assert r.attention_fraction == len(want) / n
    assert cfg.layer_types() == tuple("attention" if i in want else "mamba2" for i in range(n))


def test_explicit_indices_win_over_fraction():
    cfg = NativeConfig.from_dict({"n_layers": 6, "attention_fraction": 0.9, "attn_layer_idx": [4, 1],
                                  "ssm": "mamba"})
    assert cfg.attn_layer_idx == (4, 1)
    assert cfg.resolved().attn_layer_idx == (1, 4)
    assert cfg.resolved().attention_fraction == pytest.approx(2 / 6)
    assert cfg.layer_types() == ("mamba", "attention", "mamba", "mamba", "attention", "mamba")


def test_flavors_and_overrides():
    cfg = NativeConfig.from_dict({"flavor": "debug", "n_layers": 3})
    assert (cfg.d_model, cfg.n_layers, cfg.headdim, cfg.max_context) == (32, 3, 16, 4096)
    small = NativeConfig.from_dict({"flavor": "small"})
    assert (small.d_model, small.n_layers, small.d_state, small.chunk_size) == (64, 4, 16, 64)
    assert set(FLAVORS) >= {"debug", "small"}


def test_to_dict_round_trips_through_json():
    cfg = NativeConfig.from_dict({"flavor": "debug", "n_layers": 8, "attention_fraction": 0.25})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["attn_layer_idx"] == [2, 5]
    assert NativeConfig.from_dict(d) == cfg.resolved()


@pytest.mark.parametrize("d,match", [
    ({"dmodel": 64}, "unknown field 'dmodel'; did you mean 'd_model'?"),
    ({"flavor": "debgu"}, "did you mean 'debug'"),
    ({"d_model": 64.0}, "d_model must be int"),
    ({"n_layers": True}, "n_layers must be int"),
    ({"tie_embeddings": 1}, "tie_embeddings must be bool"),
    ({"attn_layer_idx": [0, "1"]}, "attn_layer_idx must be a list of ints"),
    ({"attention_fraction": 1.5}, "attention_fraction must be in"),
    ({"placement": "midle"}, "did you mean 'middle'"),
    ({"d_model": 130, "n_heads": 4}, "divisible by n_heads"),
    ({"headdim": 48}, "headdim"),
    ({"ssm": "mamba3"}, "ssm must be a registered non-attention mixer"),
    ({"ssm": "attention"}, "ssm must be a registered non-attention mixer"),
    ({"attn_layer_idx": [0, 4], "n_layers": 4}, "attn_layer_idx must be distinct indices"),
    ({"d_ff": -1}, "d_ff"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else "")
def test_from_dict_errors(d, match):
    with pytest.raises(ValueError, match=match.replace("?", r"\?").replace("(", r"\(")):
        NativeConfig.from_dict(d)


def test_floats_accept_ints_and_lists_become_tuples():
    cfg = NativeConfig.from_dict({"rope_theta": 500000, "attention_fraction": 1, "attn_layer_idx": [0]})
    assert cfg.rope_theta == 500000.0 and isinstance(cfg.rope_theta, float)
    assert cfg.attn_layer_idx == (0,)


def test_headdim_only_checked_when_mamba2_is_used():
    NativeConfig(headdim=48, ssm="mamba")  # no mamba2 layer: fine
    NativeConfig(headdim=48, attention_fraction=1.0)  # pure transformer: fine
