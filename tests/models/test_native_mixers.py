"""Contract tests run over every registered mixer: a new mixer is tested once it registers."""

from __future__ import annotations

import pytest
import torch

from evalkit.models.native import MIXERS, NativeConfig

# window 8 < the test length 29: swa layers really drop old tokens
CFG = NativeConfig.from_dict({"flavor": "debug", "chunk_size": 8, "window": 8})


def _mixer(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    m = MIXERS.get(name)(CFG, layer_idx=0)
    m.reset_parameters(torch.Generator().manual_seed(1))
    return m.to(dtype)


def _x(b: int = 2, L: int = 29, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(b, L, CFG.d_model, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _carried(state) -> int:
    """Elements of the tensors a decode state really holds (positions and other ints aside)."""
    return sum(t.numel() for t in state if isinstance(t, torch.Tensor))


def test_builtin_mixers_registered():
    assert {"attention", "swa", "mamba", "mamba2", "s4d", "gated_deltanet"} <= set(MIXERS.names())
    assert MIXERS.get("attention").is_attention and MIXERS.get("swa").is_attention
    for name in ("mamba", "mamba2", "s4d", "gated_deltanet"):
        assert not MIXERS.get(name).is_attention, name


@pytest.mark.parametrize("name", MIXERS.names())
def test_shape_and_causality(name):
    m, x = _mixer(name), _x()
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    x2 = x.clone()
    x2[:, 17] += 1.0
    y2 = m(x2)
    torch.testing.assert_close(y2[:, :17], y[:, :17], rtol=0, atol=1e-12)  # the past is untouched
    assert (y2[:, 17] - y[:, 17]).abs().max() > 1e-4  # and the changed token matters


@pytest.mark.parametrize("name", MIXERS.names())
@pytest.mark.parametrize("prefix", [0, 1, 13])
def test_prefill_then_step_matches_forward(name, prefix):
    m, x = _mixer(name), _x()
    y = m(x)
    if prefix:
        y_pre, state = m.prefill(x[:, :prefix])
        torch.testing.assert_close(y_pre, y[:, :prefix], rtol=1e-10, atol=1e-10)
    else:
        state = m.init_state(2, x.device, x.dtype)
    steps = []
    for t in range(prefix, x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y[:, prefix:], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", MIXERS.names())
def test_step_parity_float32(name):
    m, x = _mixer(name, torch.float32), _x(dtype=torch.float32)
    y = m(x)
    _, state = m.prefill(x[:, :11])
    steps = []
    for t in range(11, x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y[:, 11:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MIXERS.names())
def test_state_bytes(name):
    m = _mixer(name)
    kv, fixed = m.kv_bytes_per_token(2), m.fixed_state_bytes(2)
    assert kv >= 0 and fixed >= 0 and kv + fixed > 0
    assert m.state_bytes(1000, 2) == fixed + 1000 * kv
    assert m.state_bytes(10, 4) == 2 * m.state_bytes(10, 2)
    if name == "attention":
        assert (kv, fixed) == (2 * CFG.d_model * 2, 0)
    elif name == "swa":  # K and V of the window - 1 tokens the next query can still see
        assert (kv, fixed) == (0, (CFG.window - 1) * 2 * CFG.d_model * 2)
    else:
        assert kv == 0
        # the decode state the mixer really carries has exactly that many elements
        state = m.init_state(1, torch.device("cpu"), torch.float32)
        assert _carried(state) * 2 == fixed
    # after a prompt longer than any window, the carried state is exactly what state_bytes says
    _, state = m.to(torch.float32).prefill(_x(b=1, dtype=torch.float32))
    assert _carried(state) * 2 == m.state_bytes(29, 2)


@pytest.mark.parametrize("name", MIXERS.names())
def test_gradients_finite(name):
    m, x = _mixer(name, torch.float32), _x(dtype=torch.float32).requires_grad_(True)
    m(x).pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MIXERS.names())
@pytest.mark.parametrize("cuts", [(1,), (7, 8), (13, 16, 17), (3, 11, 20, 28)])
def test_prefill_in_pieces_matches_one_prefill(name, cuts):
    """Chunked prefill: each piece continues from the state the previous piece left; outputs and
    the final state (checked through the next step) equal one prefill of the whole input. The
    pieces are shorter and longer than swa's window and the SSD chunk, and start mid-chunk."""
    m, x = _mixer(name), _x()
    y, state = m.prefill(x)
    ys, s = [], None
    for a, b in zip((0, *cuts), (*cuts, x.shape[1])):
        y_piece, s = m.prefill(x[:, a:b], s)
        ys.append(y_piece)
    torch.testing.assert_close(torch.cat(ys, dim=1), y, rtol=1e-9, atol=1e-10)
    x_next = _x(L=1)[:, 0] * 0.5
    torch.testing.assert_close(m.step(x_next, s)[0], m.step(x_next, state)[0], rtol=1e-9, atol=1e-10)


def test_mixer_without_its_own_continuation_steps_through_the_piece():
    """The base class continues a prefill token by token through ``step`` (exact for any mixer)."""
    from evalkit.models.native.mixer import Mixer

    m = _mixer("mamba")
    x = _x()
    y, _ = m.prefill(x)
    _, s = m.prefill(x[:, :10])
    y_tail, _ = Mixer._continue(m, x[:, 10:], s)
    torch.testing.assert_close(y_tail, y[:, 10:], rtol=1e-9, atol=1e-10)
