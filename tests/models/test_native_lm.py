"""NativeLM: decode parity, greedy generation, length limit, init, checkpoints."""

from __future__ import annotations

import pytest
import torch

from evalkit.errors import CheckpointError, ContextLengthError
from evalkit.models.native import NativeConfig, NativeLM

LAYOUTS = {
    "mamba2": {"ssm": "mamba2"},
    "mamba": {"ssm": "mamba"},
    "transformer": {"attention_fraction": 1.0},
    "hybrid-mlp": {"ssm": "mamba", "n_layers": 4, "attention_fraction": 0.25, "d_ff": 48},
    "s4d": {"ssm": "s4d"},
    "gated_deltanet": {"ssm": "gated_deltanet"},
    "swa": {"attention": "swa", "window": 6, "attention_fraction": 1.0},
    "pattern": {"pattern": "GWSA mM", "window": 5, "d_ff": 24},  # every mixer in one stack
    "learned-pos": {"pattern": "AMA", "pos_emb": "learned", "qkv_bias": True},  # Zoology's attention
    "no-pos": {"attention_fraction": 1.0, "pos_emb": "none"},
}


def _model(layout: str, seed: int = 0, **over) -> NativeLM:
    cfg = NativeConfig.from_dict({"flavor": "debug", "chunk_size": 8, **LAYOUTS[layout], **over})
    return NativeLM(cfg, seed=seed)


def _ids(b: int = 2, L: int = 21) -> torch.Tensor:
    return torch.randint(0, 512, (b, L), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_shapes_and_hidden_head(layout):
    m = _model(layout)
    ids = _ids()
    logits = m(ids)
    assert logits.shape == (2, 21, 512)
    torch.testing.assert_close(m.head(m.hidden(ids)[:, [3, 20]]), logits[:, [3, 20]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prefill_step_matches_forward(layout):
    m = _model(layout).double()
    ids = _ids()
    logits = m(ids)
    last, state = m.prefill(ids[:, :9])
    got = [last]
    for t in range(9, 21):
        last, state = m.step(ids[:, t], state)
        got.append(last)
    torch.testing.assert_close(torch.stack(got, 1), logits[:, 8:], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["mamba2", "hybrid-mlp", "pattern"])
def test_generate_greedy_equals_argmax_of_forward_loop(layout):
    m = _model(layout)
    ids = _ids(L=10)
    gen = m.generate_greedy(ids, 6)
    seq = ids
    for _ in range(6):
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert gen.shape == (2, 6)
    assert torch.equal(gen, seq[:, 10:])


def test_context_length_error():
    m = _model("mamba2", max_context=16)
    m(_ids(L=16))
    with pytest.raises(ContextLengthError, match="17 tokens.*max_context of 16"):
        m(_ids(L=17))
    with pytest.raises(ContextLengthError):
        m.generate_greedy(_ids(L=12), 6)


def test_init_is_deterministic_and_seed_dependent():
    a, b, c = _model("hybrid-mlp", seed=3), _model("hybrid-mlp", seed=3), _model("hybrid-mlp", seed=4)
    torch.manual_seed(123)  # the global RNG must not matter
    d = _model("hybrid-mlp", seed=3)
    for (name, p), q, r, s in zip(a.named_parameters(), b.parameters(), c.parameters(), d.parameters()):
        assert torch.equal(p, q) and torch.equal(p, s), name
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_describe():
    m = _model("hybrid-mlp")
    d = m.describe()
    assert d["layer_types"] == ["mamba", "mamba", "attention", "mamba"]
    assert d["attn_layer_idx"] == [2] and d["attention_fraction"] == 0.25
    assert d["kv_bytes_per_token"] == 2 * 32 * 2
    d_inner = 64
    assert d["fixed_state_bytes"] == 3 * d_inner * (3 + 8) * 2  # 3 mamba layers: conv + ssm
    assert d["params"] == sum(p.numel() for p in m.parameters())
    assert m.lm_head.weight is m.embed.weight  # tied, counted once


def test_describe_pattern_hybrid():
    """Layer types and attention share come from the pattern; swa's window-bounded KV is fixed
    state, so only full attention adds bytes per token."""
    m = _model("pattern")
    d = m.describe()
    assert d["layer_types"] == ["gated_deltanet", "swa", "s4d", "attention", "mamba", "mamba2"]
    assert d["attn_layer_idx"] == [1, 3] and d["attention_fraction"] == pytest.approx(2 / 6)
    assert d["window"] == 5
    assert d["kv_bytes_per_token"] == 2 * 32 * 2  # the one full-attention layer
    E, N, K = 64, 8, 4
    gdn = (2 * (E // 16) * N + E) * (K - 1) + (E // 16) * 16 * N  # conv over q, k, v + H·P·N
    swa = (5 - 1) * 2 * 32  # K and V of window - 1 tokens
    s4d = E * (K - 1 + N)
    mamba = E * (K - 1 + N)
    mamba2 = (E + 2 * N) * (K - 1) + (E // 16) * 16 * N
    assert d["fixed_state_bytes"] == 2 * (gdn + swa + s4d + mamba + mamba2)
    assert "window" not in _model("hybrid-mlp").describe()  # only where a layer uses it


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path, tie):
    m = _model("hybrid-mlp", seed=7, tie_embeddings=tie)
    m.save_pretrained(tmp_path / "ckpt")
    loaded = NativeLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == m.cfg
    ids = _ids()
    assert torch.equal(loaded(ids), m(ids))
    assert (loaded.lm_head.weight is loaded.embed.weight) == tie
    assert torch.equal(NativeLM.from_pretrained(tmp_path / "ckpt" / "model.safetensors")(ids), m(ids))


def test_truncated_checkpoint(tmp_path):
    path = _model("mamba2").save_pretrained(tmp_path / "ckpt") / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        NativeLM.from_pretrained(tmp_path / "ckpt")


def test_missing_unexpected_and_mismatched_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _model("mamba2").save_pretrained(tmp_path / "ckpt") / "model.safetensors"
    good = load_file(str(path))
    bad = dict(good)
    del bad["layers.1.mixer.in_proj.weight"]
    save_file(bad, str(path))
    with pytest.raises(CheckpointError, match="missing tensor 'layers.1.mixer.in_proj.weight'"):
        NativeLM.from_pretrained(tmp_path / "ckpt")
    save_file({**good, "extra.weight": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.weight'"):
        NativeLM.from_pretrained(tmp_path / "ckpt")
    save_file({**good, "norm_f.weight": torch.ones(3)}, str(path))
    with pytest.raises(CheckpointError, match="'norm_f.weight' has shape"):
        NativeLM.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="file not found"):
        NativeLM.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("layout", ["pattern", "hybrid-mlp", "transformer"])
@pytest.mark.parametrize("chunk", [1, 5, 8, 20])
def test_chunked_prefill_matches_one_pass(layout, chunk):
    """prefill(chunk=c) runs the prompt in pieces with state passing: same last logits, and the
    same decode afterwards, as one pass (fp64 so the comparison is tight)."""
    m = _model(layout).double()
    ids = _ids()
    logits, state = m.prefill(ids)
    logits_c, state_c = m.prefill(ids, chunk=chunk)
    assert state_c.pos == state.pos == ids.shape[1]
    torch.testing.assert_close(logits_c, logits, rtol=1e-9, atol=1e-9)
    tok = logits.argmax(-1)
    torch.testing.assert_close(m.step(tok, state_c)[0], m.step(tok, state)[0], rtol=1e-9, atol=1e-9)


def test_prefill_continues_from_a_state_and_checks_the_total_length():
    m = _model("pattern", max_context=32).double()
    ids = _ids(L=30)
    logits, _ = m.prefill(ids)
    _, s = m.prefill(ids[:, :12])
    logits2, s2 = m.prefill(ids[:, 12:], s)
    torch.testing.assert_close(logits2, logits, rtol=1e-9, atol=1e-9)
    assert s2.pos == 30
    with pytest.raises(ContextLengthError):
        m.prefill(_ids(L=3), s2)  # 30 + 3 > max_context 32
    with pytest.raises(ValueError, match="at least one token"):
        m.prefill(ids[:, :0])


def test_kv_cache_grows_in_place_and_branches_copy():
    """Decode steps write the attention cache in place (no copy per token); two continuations of
    one state (a branch) do not disturb each other."""
    m = _model("transformer").double()
    ids = _ids(L=12)
    _, s0 = m.prefill(ids)
    cache = s0.layers[0][3]
    s = s0
    for t in range(5):
        _, s = m.step(ids[:, t], s)
    assert s.layers[0][3] is cache and cache.filled == 17  # same buffer, written in place
    a, _ = m.step(ids[:, 0], s0)  # a branch from s0: its next slot was already written
    b, _ = m.step(ids[:, 1], s0)
    assert s0.layers[0][0].shape[2] == 12
    fresh = [m.step(ids[:, t], m.prefill(ids)[1])[0] for t in (0, 1)]
    torch.testing.assert_close(a, fresh[0], rtol=0, atol=0)
    torch.testing.assert_close(b, fresh[1], rtol=0, atol=0)


def test_chunked_prefill_allocates_the_kv_cache_once(monkeypatch):
    """The first piece sizes each attention layer's cache for the whole prompt: no reallocation
    per piece (which fragments the GPU allocator at a million tokens)."""
    from evalkit.models.native.attention import KVCache

    made = []
    init = KVCache.__init__
    monkeypatch.setattr(KVCache, "__init__", lambda self, k, v, cap: made.append(cap) or init(self, k, v, cap))
    m = _model("transformer").double()
    _, s = m.prefill(_ids(L=21), chunk=5)
    assert len(made) == m.cfg.n_layers and min(made) >= 21
    assert all(layer[3].filled == 21 for layer in s.layers)


def test_position_options_keep_old_identities_and_weights():
    """pos_emb / qkv_bias at their defaults leave to_dict (the identity) and the initial weights
    exactly as before; other values appear in to_dict, add their parameters and are validated."""
    base = NativeConfig.from_dict({"flavor": "debug", "attention_fraction": 1.0})
    assert "pos_emb" not in base.to_dict() and "qkv_bias" not in base.to_dict()
    learned = NativeConfig.from_dict({"flavor": "debug", "attention_fraction": 1.0, "pos_emb": "learned",
                                      "qkv_bias": True})
    assert learned.to_dict()["pos_emb"] == "learned" and learned.to_dict()["qkv_bias"] is True
    m0, m1 = NativeLM(base, seed=3), NativeLM(learned, seed=3)
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    assert set(sd1) - set(sd0) == {"pos_embed.weight", "layers.0.mixer.qkv.bias", "layers.1.mixer.qkv.bias"}
    for name, t in sd0.items():  # the extra parameters are drawn last: the shared ones are equal
        torch.testing.assert_close(sd1[name], t, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pos_emb must be one of.*did you mean 'learned'"):
        NativeConfig.from_dict({"flavor": "debug", "pos_emb": "learnd"})


def test_learned_positions_matter_and_rope_is_off():
    m = _model("no-pos", n_layers=1).double()
    ids = _ids()
    perm = ids.clone()
    perm[:, [3, 7]] = perm[:, [7, 3]]
    # one attention layer without positions is permutation-invariant over the past
    torch.testing.assert_close(m(perm)[:, -1], m(ids)[:, -1], rtol=1e-9, atol=1e-9)
    m2 = _model("no-pos", n_layers=1, pos_emb="learned").double()
    assert (m2(perm)[:, -1] - m2(ids)[:, -1]).abs().max() > 1e-6
