"""ssd_ref (chunked SSD) against the per-step float64 loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evalkit.kernels.ssd import ssd, ssd_naive, ssd_ref

CASES = [(2, 1, 4, 8, 6, 16), (2, 7, 4, 8, 6, 16), (1, 63, 2, 4, 5, 16), (2, 130, 4, 8, 6, 64),
         (2, 130, 3, 5, 4, 16)]


def _inputs(b: int, L: int, h: int, p: int, n: int, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(b * 1000 + L * 10 + h)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    t = dict(x=r(b, L, h, p), dt=F.softplus(r(b, L, h) - 1.0), A=-torch.exp(r(h)),
             B=r(b, L, 1, n), C=r(b, L, 1, n), D=r(h))
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


@pytest.mark.parametrize("b,L,h,p,n,chunk", CASES,
                         ids=[f"B{b}-L{L}-H{h}-P{p}-N{n}-T{c}" for b, L, h, p, n, c in CASES])
@pytest.mark.parametrize("with_state", [False, True], ids=["no-h0", "h0"])
def test_matches_naive_loop(b, L, h, p, n, chunk, with_state):
    t = _inputs(b, L, h, p, n)
    h0 = torch.randn(b, h, p, n, dtype=torch.float64) if with_state else None
    y, hT = ssd_ref(**t, chunk_size=chunk, initial_state=h0, return_final_state=True)
    y_ref, hT_ref = ssd_naive(**t, initial_state=h0, return_final_state=True)
    assert y.shape == (b, L, h, p) and hT.shape == (b, h, p, n)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hT, hT_ref, rtol=1e-10, atol=1e-10)


def test_groups_broadcast_over_heads():
    """G=2 groups: heads 0-1 read group 0's B/C, heads 2-3 group 1's."""
    t = _inputs(2, 33, 4, 3, 5)
    g = torch.Generator().manual_seed(7)
    t["B"], t["C"] = (torch.randn(2, 33, 2, 5, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(ssd_ref(**t, chunk_size=8), ssd_naive(**t), rtol=1e-10, atol=1e-10)


def test_float32_returns_input_dtype_and_is_close():
    t = _inputs(2, 70, 4, 8, 6, dtype=torch.float32)
    y = ssd(**t, chunk_size=16)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ssd_naive(**t), rtol=1e-4, atol=1e-4)


def test_gradients_match_naive_loop():
    t = _inputs(2, 37, 2, 3, 4, requires_grad=True)
    h0 = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    args = {**t, "initial_state": h0}
    w = torch.randn(2, 37, 2, 3, dtype=torch.float64)
    y, hT = ssd_ref(**args, chunk_size=8, return_final_state=True)
    grads = torch.autograd.grad((y * w).sum() + hT.sum(), list(args.values()))
    y2, hT2 = ssd_naive(**args, return_final_state=True)
    grads2 = torch.autograd.grad((y2 * w).sum() + hT2.sum(), list(args.values()))
    for name, g, g2 in zip(args, grads, grads2):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, g2, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_gradcheck_tiny():
    t = _inputs(1, 5, 2, 2, 2, requires_grad=True)
    names = list(t)
    fn = lambda *xs: ssd_ref(**dict(zip(names, xs)), chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(t.values()))
