"""Triton SSD (evalkit/kernels/ssd/triton.py) against ssd_ref on fresh random inputs.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set below before
triton is imported) at small sizes, in float32 and float16 (bf16 dots are wrong in the
interpreter); on a GPU the same tests also run bf16.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from evalkit.kernels import dispatch  # noqa: E402
from evalkit.kernels.ssd import ssd, ssd_ref  # noqa: E402
from evalkit.kernels.ssd import triton as ssd_triton  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# relative error ‖out − ref‖ / ‖ref‖ allowed per input dtype (the reference sees the same rounded
# inputs; the gap is the kernel's bf16/fp16 dot operands and fp32 summation order)
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# (batch, L, heads, headdim, state, groups, chunk)
CASES = [(1, 63, 2, 16, 16, 1, 16), (2, 500, 4, 8, 8, 2, 64), (1, 1000, 2, 16, 32, 1, 128),
         (2, 77, 3, 5, 6, 1, 32)]
IDS = [f"B{b}-L{L}-H{h}-P{p}-N{n}-G{g}-T{c}" for b, L, h, p, n, g, c in CASES]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(b, L, h, p, n, g, dtype, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = dict(x=r(b, L, h, p).to(dtype), dt=F.softplus(r(b, L, h) - 1.0).to(dtype),
             A=-torch.exp(r(h)), B=r(b, L, g, n).to(dtype), C=r(b, L, g, n).to(dtype), D=r(h))
    t = {k: v.to(DEV) for k, v in t.items()}
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def _ref(t, chunk, **kw):
    """ssd_ref on the same (already rounded) inputs, upcast to float32."""
    f = {k: v.float() if v is not None else None for k, v in t.items()}
    return ssd_ref(**f, chunk_size=chunk, return_final_state=True, **kw)


@pytest.mark.parametrize("b,L,h,p,n,g,chunk", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_h0", [False, True], ids=["no-h0", "h0"])
def test_forward_matches_reference(b, L, h, p, n, g, chunk, dtype, with_h0):
    t = _inputs(b, L, h, p, n, g, dtype, seed=L * 7 + n + int(with_h0))
    h0 = torch.randn(b, h, p, n, device=DEV) if with_h0 else None
    y, hT = ssd_triton.ssd(**t, chunk_size=chunk, initial_state=h0, return_final_state=True)
    y_ref, hT_ref = _ref(t, chunk, initial_state=h0)
    assert y.dtype == dtype and y.shape == (b, L, h, p)
    assert hT.dtype == torch.float32 and hT.shape == (b, h, p, n)
    assert _rel(y, y_ref) < TOL[dtype]
    assert _rel(hT, hT_ref) < TOL[dtype]


def test_no_D_and_nonstandard_chunk():
    """D=None; a chunk size the kernel cannot use (48) falls back to 64 with the same result."""
    t = _inputs(1, 100, 2, 16, 16, 1, torch.float32, seed=3)
    t["D"] = None
    y, hT = ssd_triton.ssd(**t, chunk_size=48, return_final_state=True)
    y_ref, hT_ref = _ref(t, 48)
    assert _rel(y, y_ref) < 1e-5 and _rel(hT, hT_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if ON_GPU else []), ids=str)
def test_gradients_match_reference(dtype):
    """Outputs and the final state both carry gradient; every input gets the reference's."""
    b, L, h, p, n = 2, 70, 2, 8, 16
    t = _inputs(b, L, h, p, n, 1, dtype, seed=11, requires_grad=True)
    h0 = torch.randn(b, h, p, n, device=DEV, requires_grad=True)
    wy, wh = torch.randn(b, L, h, p, device=DEV), torch.randn(b, h, p, n, device=DEV)
    args = {**t, "initial_state": h0}
    y, hT = ssd_triton.ssd(**args, chunk_size=32, return_final_state=True)
    g = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(args.values()))
    y_r, hT_r = ssd_ref(**args, chunk_size=32, return_final_state=True)
    g_r = torch.autograd.grad((y_r.float() * wy).sum() + (hT_r * wh).sum(), list(args.values()))
    for name, a, r in zip(args, g, g_r):
        assert a.dtype == r.dtype, name
        assert _rel(a, r) < TOL[dtype], name


def test_dispatch_switch(monkeypatch):
    """EVALKIT_KERNELS picks the path; the counter the cost probe reads follows it."""
    t = _inputs(1, 40, 2, 16, 16, 1, torch.float32, seed=5)
    monkeypatch.setenv("EVALKIT_KERNELS", "ref")
    before = dispatch.kernel_calls()
    y_ref = ssd(**t, chunk_size=16)
    assert dispatch.kernel_calls() == before
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    y = ssd(**t, chunk_size=16)
    assert dispatch.kernel_calls() == before + 1
    assert _rel(y, y_ref) < 1e-5
    monkeypatch.setenv("EVALKIT_KERNELS", "auto")
    ssd(**t, chunk_size=16)
    assert dispatch.kernel_calls() == before + 1 + int(ON_GPU)  # auto: kernel on CUDA only
    monkeypatch.setenv("EVALKIT_KERNELS", "fast")
    with pytest.raises(ValueError, match="EVALKIT_KERNELS"):
        ssd(**t, chunk_size=16)
