"""Triton selective scan (evalkit/kernels/selective_scan/triton.py) against selective_scan_ref.

Without a GPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set below before
triton is imported) at small sizes, in float32 and float16; on a GPU the tests also run bf16.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from evalkit.kernels import dispatch  # noqa: E402
from evalkit.kernels.selective_scan import selective_scan, selective_scan_ref  # noqa: E402
from evalkit.kernels.selective_scan import triton as ss_triton  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# ‖out − ref‖ / ‖ref‖; the reference sees the same rounded inputs, the kernel rounds y once more
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (batch, channels, L, state)
CASES = [(1, 8, 63, 16), (2, 5, 500, 8), (1, 4, 1000, 16), (2, 3, 37, 4)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(b, d, L, n, dtype, seed, full=True, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = dict(u=r(b, d, L).to(dtype), delta=(r(b, d, L) - 1.0).to(dtype),
             A=-torch.rand(d, n, generator=gen) * 4 - 0.1,
             B=r(b, n, L).to(dtype), C=r(b, n, L).to(dtype))
    if full:
        t.update(D=r(d), z=r(b, d, L).to(dtype), delta_bias=r(d) * 0.5)
    t = {k: v.to(DEV) for k, v in t.items()}
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def _ref(t, **kw):
    f = {k: v.float() for k, v in t.items()}
    return selective_scan_ref(**f, return_final_state=True, **kw)


# Under the interpreter the long cases (63 chunks of the scan) take ~8 s each: run them in two
# of the four (dtype, options) combinations; on a GPU every combination runs.
GRID = [(c, dt, full) for c in CASES for dt in DTYPES for full in (True, False)
        if ON_GPU or c[2] < 500 or (dt == torch.float32) == full]


@pytest.mark.parametrize("b,d,L,n,dtype,full", [(*c, dt, f) for c, dt, f in GRID],
                         ids=[f"B{c[0]}-D{c[1]}-L{c[2]}-N{c[3]}-{str(dt)[6:]}-{'full' if f else 'bare'}"
                              for c, dt, f in GRID])
def test_forward_matches_reference(b, d, L, n, dtype, full):
    t = _inputs(b, d, L, n, dtype, seed=L * 3 + d + int(full), full=full)
    h0 = torch.randn(b, d, n, device=DEV) if full else None
    y, hT = ss_triton.selective_scan(**t, initial_state=h0, return_final_state=True)
    y_ref, hT_ref = _ref(t, initial_state=h0)
    assert y.dtype == dtype and y.shape == (b, d, L)
    assert hT.dtype == torch.float32 and hT.shape == (b, d, n)
    assert _rel(y, y_ref) < TOL[dtype]
    assert _rel(hT, hT_ref) < 1e-5


def test_no_softplus_and_strided_inputs():
    """delta_softplus=False; u, delta, z as transposed views (the Mamba mixer passes such)."""
    b, d, L, n = 2, 6, 50, 16
    t = _inputs(b, d, L, n, torch.float32, seed=9)
    t["delta"] = torch.rand(b, L, d, device=DEV).transpose(1, 2)  # Δ > 0 already, strided
    t["z"] = t["z"].transpose(1, 2).contiguous().transpose(1, 2)
    y, hT = ss_triton.selective_scan(**t, delta_softplus=False, return_final_state=True)
    y_ref, hT_ref = _ref(t, delta_softplus=False)
    assert _rel(y, y_ref) < 1e-5 and _rel(hT, hT_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gradients_match_reference(dtype):
    b, d, L, n = 2, 4, 45, 8
    t = _inputs(b, d, L, n, dtype, seed=13, requires_grad=True)
    h0 = torch.randn(b, d, n, device=DEV, requires_grad=True)
    wy, wh = torch.randn(b, d, L, device=DEV), torch.randn(b, d, n, device=DEV)
    args = {**t, "initial_state": h0}
    y, hT = ss_triton.selective_scan(**args, return_final_state=True)
    g = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(args.values()))
    y_r, hT_r = selective_scan_ref(**args, return_final_state=True)
    g_r = torch.autograd.grad((y_r.float() * wy).sum() + (hT_r * wh).sum(), list(args.values()))
    for name, a, r in zip(args, g, g_r):
        assert a.dtype == r.dtype, name
        assert _rel(a, r) < TOL[dtype], name


def test_dispatch_switch(monkeypatch):
    t = _inputs(1, 4, 30, 8, torch.float32, seed=5)
    monkeypatch.setenv("EVALKIT_KERNELS", "ref")
    before = dispatch.kernel_calls()
    y_ref = selective_scan(**t)
    assert dispatch.kernel_calls() == before
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    y = selective_scan(**t)
    assert dispatch.kernel_calls() == before + 1
    assert _rel(y, y_ref) < 1e-5
    t64 = {k: v.double() for k, v in t.items()}  # float64 always runs the reference
    selective_scan(**t64)
    assert dispatch.kernel_calls() == before + 1
