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


# ---- layouts beyond attention + one SSM: attention mixer choice, patterns, windows ----------
def test_attention_field_picks_the_attention_mixer():
    cfg = NativeConfig.from_dict({"flavor": "debug", "ssm": "gated_deltanet", "attention": "swa", "window": 64,
                                  "n_layers": 4, "attention_fraction": 0.25})
    assert cfg.layer_types() == ("gated_deltanet", "gated_deltanet", "swa", "gated_deltanet")
    assert cfg.resolved().attn_layer_idx == (2,)  # swa counts as attention for the fraction


@pytest.mark.parametrize("pattern", ["MWSG mAGM", "M W S G m A G M", ["mamba2", "swa", "s4d", "gated_deltanet",
                                                                     "mamba", "attention", "gated_deltanet", "mamba2"]])
def test_pattern_letters_and_names(pattern):
    cfg = NativeConfig.from_dict({"flavor": "debug", "window": 16, "pattern": pattern})
    assert cfg.n_layers == 8  # taken from the pattern when not given
    want = ("mamba2", "swa", "s4d", "gated_deltanet", "mamba", "attention", "gated_deltanet", "mamba2")
    assert cfg.pattern == want and cfg.layer_types() == want
    r = cfg.resolved()
    assert r.attn_layer_idx == (1, 5) and r.attention_fraction == 0.25
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["pattern"] == list(want) and d["attn_layer_idx"] == [1, 5]
    assert NativeConfig.from_dict(d) == r  # round trip, the resolved layer list included


def test_pattern_wins_over_fraction_and_agrees_with_indices():
    cfg = NativeConfig.from_dict({"flavor": "debug", "pattern": "MMAM", "attention_fraction": 1.0,
                                  "attn_layer_idx": [2], "n_layers": 4})
    assert cfg.layer_types() == ("mamba2", "mamba2", "attention", "mamba2")
    assert cfg.resolved().attention_fraction == 0.25
    assert NativeConfig(pattern="AM", n_layers=2).pattern == ("attention", "mamba2")  # str in the constructor too


def test_later_fields_stay_out_of_old_identities():
    """Configs that do not use attention / window / pattern serialise exactly as before those
    fields existed, so the zoo's model identities and stored cell keys do not change. The hashes
    were computed with the code before the fields were added."""
    from evalkit.models.base import stable_hash

    golden = {
        '{"flavor": "small", "ssm": "mamba2", "attention_fraction": 0.25}':
            "151072bf93103f2f9533ba01bb189dfcbe57bc7abb419a9ca7eb0facc05e6bd8",
        '{"flavor": "debug", "ssm": "mamba"}': "22538411060e4e33cac6c4cec5563c4409f758bbddaabaf5512179d22ccc026b",
        '{"flavor": "base", "attention_fraction": 1.0}':
            "20a85111fd8650e25b853e288cd19bbd078bcc93cf226be6b9283b5470b1db4d",
    }
    for arch, want in golden.items():
        d = NativeConfig.from_dict(json.loads(arch)).to_dict()
        assert not {"attention", "window", "pattern"} & set(d)
        assert stable_hash(d) == want, arch
    d = NativeConfig.from_dict({"attention": "swa", "window": 32, "attention_fraction": 1.0}).to_dict()
    assert (d["attention"], d["window"]) == ("swa", 32) and "pattern" not in d


@pytest.mark.parametrize("d,match", [
    ({"pattern": "MMXA"}, "'pattern' has an unknown mixer letter 'X' at character 2"),
    ({"pattern": "MMaM"}, "unknown mixer letter 'a' at character 2; did you mean 'A' (attention)?"),
    ({"pattern": ["mamba2", "atention"]}, "'pattern' names an unknown mixer 'atention' at layer 1; did you mean 'attention'?"),
    ({"pattern": ["mamba2", 3]}, "'pattern' must be a string of mixer letters or a non-empty list"),
    ({"pattern": "  "}, "'pattern' is empty"),
    ({"pattern": "MMMA MMMA", "n_layers": 4}, "'pattern' has 8 layers but n_layers is 4"),
    ({"pattern": "MMAM", "attn_layer_idx": [1]}, "'attn_layer_idx' [1] disagrees with the attention layers of 'pattern' [2]"),
    ({"attention": "mamba"}, "'attention' must be a registered attention mixer, got 'mamba'"),
    ({"attention": "swaa"}, "did you mean 'swa'"),
    ({"ssm": "swa"}, "ssm must be a registered non-attention mixer"),
    ({"attention": "swa", "attention_fraction": 1.0}, "swa layers need 'window' >= 1"),
    ({"pattern": "W", "window": 8192}, "'window' (8192) is larger than max_context (4096)"),
    ({"window": -1}, "'window' must be >= 1"),
    ({"ssm": "s4d", "d_state": 7}, "'d_state' (7) must be even for s4d layers"),
    ({"pattern": "MG", "headdim": 48}, "headdim (48) must divide d_inner"),
    ({"ssm": "gated_deltanet", "headdim": 48}, "for gated_deltanet layers"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else "")
def test_layout_errors(d, match):
    import re

    with pytest.raises(ValueError, match=re.escape(match)):
        NativeConfig.from_dict({"flavor": "debug", **d})
