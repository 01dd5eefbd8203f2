"""gated_delta_ref (chunked, UT transform) against the paper's recurrence as a float64 loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evalkit.kernels.gated_delta import (
    gated_delta_naive,
    gated_delta_ref,
    gated_delta_rule,
    gated_delta_step,
)

# (batch, L, heads, N (key dim), P (value dim), chunk)
CASES = [(2, 1, 2, 4, 3, 8), (2, 7, 2, 4, 3, 8), (1, 63, 2, 8, 5, 16), (2, 130, 3, 4, 6, 64),
         (2, 130, 2, 5, 4, 16), (1, 29, 1, 16, 8, 8)]


def _inputs(b: int, L: int, h: int, n: int, p: int, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(b * 1000 + L * 10 + h)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    t = {"q": F.normalize(r(b, L, h, n), dim=-1) * n ** -0.5, "k": F.normalize(r(b, L, h, n), dim=-1),
         "v": r(b, L, h, p), "g": -F.softplus(r(b, L, h)), "beta": torch.sigmoid(r(b, L, h))}
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


@pytest.mark.parametrize("b,L,h,n,p,chunk", CASES,
                         ids=[f"B{b}-L{L}-H{h}-N{n}-P{p}-T{c}" for b, L, h, n, p, c in CASES])
@pytest.mark.parametrize("with_state", [False, True], ids=["no-S0", "S0"])
def test_chunked_matches_naive_loop(b, L, h, n, p, chunk, with_state):
    t = _inputs(b, L, h, n, p)
    S0 = torch.randn(b, h, p, n, dtype=torch.float64) if with_state else None
    o, S = gated_delta_ref(**t, chunk_size=chunk, initial_state=S0, return_final_state=True)
    o_ref, S_ref = gated_delta_naive(**t, initial_state=S0, return_final_state=True)
    assert o.shape == (b, L, h, p) and S.shape == (b, h, p, n)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)


def test_step_matches_naive_loop():
    t = _inputs(2, 21, 3, 4, 5)
    S = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    outs = []
    for i in range(21):
        o, S = gated_delta_step(*(t[x][:, i] for x in ("q", "k", "v", "g", "beta")), S)
        outs.append(o)
    o_ref, S_ref = gated_delta_naive(**t, return_final_state=True)
    torch.testing.assert_close(torch.stack(outs, 1), o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=1e-12, atol=1e-12)


def test_delta_rule_rewrites_a_key():
    """β = 1, no decay: writing (k, v1) then (k, v2) leaves S k = v2 (replace, not add)."""
    k = F.normalize(torch.randn(1, 1, 1, 6, dtype=torch.float64), dim=-1).expand(1, 2, 1, 6)
    v = torch.randn(1, 2, 1, 3, dtype=torch.float64)
    ones, zeros = torch.ones(1, 2, 1, dtype=torch.float64), torch.zeros(1, 2, 1, dtype=torch.float64)
    o, S = gated_delta_ref(k, k, v, zeros, ones, chunk_size=4, return_final_state=True)
    torch.testing.assert_close(o[0, :, 0], v[0, :, 0], rtol=1e-12, atol=1e-12)  # reads what was just written
    torch.testing.assert_close(S[0, 0] @ k[0, 0, 0], v[0, 1, 0], rtol=1e-12, atol=1e-12)


def test_float32_returns_input_dtype_and_is_close():
    t = _inputs(2, 70, 4, 8, 6, dtype=torch.float32)
    o = gated_delta_rule(**t, chunk_size=16)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o.double(), gated_delta_naive(**t), rtol=1e-4, atol=1e-5)


def test_strong_decay_stays_finite():
    """Decays far below float32's range (g = -200 per step) give zeros, not NaN or subnormals."""
    t = _inputs(1, 40, 2, 4, 3, dtype=torch.float32)
    t["g"] = torch.full_like(t["g"], -200.0)
    o = gated_delta_ref(**t, chunk_size=16)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.double(), gated_delta_naive(**t), rtol=1e-4, atol=1e-5)


def test_gradients_match_naive_loop():
    t = _inputs(2, 37, 2, 3, 4, requires_grad=True)
    S0 = torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    args = {**t, "initial_state": S0}
    w = torch.randn(2, 37, 2, 4, dtype=torch.float64)
    o, S = gated_delta_ref(**args, chunk_size=8, return_final_state=True)
    grads = torch.autograd.grad((o * w).sum() + S.sum(), list(args.values()))
    o_ref, S_ref = gated_delta_naive(**args, return_final_state=True)
    grads_ref = torch.autograd.grad((o_ref * w).sum() + S_ref.sum(), list(args.values()))
    for name, a, r in zip(args, grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("C", [1, 2, 7, 8, 16, 48, 64])
def test_unit_lower_inverse(C):
    from evalkit.kernels.gated_delta.ref import unit_lower_inverse

    A = 0.2 * torch.randn(3, 2, C, C, dtype=torch.float64).tril(-1)
    T = unit_lower_inverse(A)
    torch.testing.assert_close(T @ (A + torch.eye(C, dtype=torch.float64)), torch.eye(C, dtype=torch.float64).expand(3, 2, C, C),
                               rtol=1e-9, atol=1e-9)
