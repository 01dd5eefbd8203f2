"""Sliding-window attention: the blocked parallel path against a dense band mask, the cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evalkit.models.native import MIXERS, NativeConfig
from evalkit.models.native.swa import band_mask, sliding_window_attention


@pytest.mark.parametrize("L,window", [(1, 1), (29, 1), (29, 3), (29, 8), (32, 8), (29, 28), (29, 29), (17, 64)],
                         ids=lambda v: str(v))
def test_blocked_equals_dense_band_mask(L, window):
    g = torch.Generator().manual_seed(L * 100 + window)
    q, k, v = (torch.randn(2, 3, L, 8, generator=g, dtype=torch.float64) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(L, window))
    torch.testing.assert_close(sliding_window_attention(q, k, v, window), want, rtol=1e-12, atol=1e-12)


def test_band_mask():
    assert band_mask(4, 2).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def _pair(window: int):
    cfg = NativeConfig.from_dict({"flavor": "debug", "window": window})
    swa, full = MIXERS.get("swa")(cfg, 0).double(), MIXERS.get("attention")(cfg, 0).double()
    swa.reset_parameters(torch.Generator().manual_seed(1))
    full.reset_parameters(torch.Generator().manual_seed(1))
    return swa, full


def test_window_covering_the_input_is_full_attention():
    swa, full = _pair(window=40)
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    torch.testing.assert_close(swa(x), full(x), rtol=1e-12, atol=1e-12)


def test_tokens_outside_the_window_do_not_matter():
    swa, _ = _pair(window=5)
    x = torch.randn(1, 20, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :10] = torch.randn(1, 10, 32, dtype=torch.float64)  # tokens 0..9 changed
    y, y2 = swa(x), swa(x2)
    torch.testing.assert_close(y[:, 14:], y2[:, 14:], rtol=0, atol=1e-12)  # token 14 sees 10..14
    assert (y[:, 13] - y2[:, 13]).abs().max() > 1e-6  # token 13 still sees token 9


def test_decode_cache_stays_bounded():
    swa, _ = _pair(window=4)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    _, state = swa.prefill(x[:, :2])
    assert state[0].shape[2] == 2
    for t in range(2, 12):
        _, state = swa.step(x[:, t], state)
        assert state[0].shape[2] == min(t + 1, 3) and state[2] == t + 1


def test_analytic_flops_stop_growing_at_the_window():
    from evalkit import cost

    swa = NativeConfig.from_dict({"flavor": "debug", "attention": "swa", "window": 64, "attention_fraction": 1.0})
    full = NativeConfig.from_dict({"flavor": "debug", "attention_fraction": 1.0})
    assert cost.analytic_flops_per_token(swa, 64) == cost.analytic_flops_per_token(full, 64)
    f = lambda L: cost.mixer_sequence_flops(swa, "swa", L)
    assert f(64) < f(1000) < f(10 ** 6) < 2 * 2 * 32 * 64  # the average span approaches the window
    assert f(10 ** 6) == pytest.approx(2 * 2 * 32 * 64, rel=1e-3)
