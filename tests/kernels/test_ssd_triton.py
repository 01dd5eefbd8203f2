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
# N = 256 and 200 take the N-blocked output path (state wider than OUT_MAX_N; Mamba-2 N=256 crashed
# on the H200 before it).
CASES = [(1, 63, 2, 16, 16, 1, 16), (2, 500, 4, 8, 8, 2, 64), (1, 1000, 2, 16, 32, 1, 128),
         (2, 77, 3, 5, 6, 1, 32), (2, 150, 2, 32, 256, 1, 64), (1, 70, 2, 8, 200, 1, 32)]
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


@pytest.mark.parametrize("state_chunk", [32, 64, 256])
def test_state_chunk_changes_rounding_only(state_chunk):
    """The state kernel's chunk (K output chunks, re-derived in the output kernel) gives the same
    y, final state and per-chunk entering states (the backward's input) as one state per chunk;
    150 steps leave a partial output chunk and a partial state chunk."""
    t = _inputs(2, 150, 2, 16, 16, 1, torch.float32, seed=6)
    h0 = torch.randn(2, 2, 16, 16, device=DEV)
    y, hT, st = ssd_triton.ssd_fwd(**t, chunk_size=16, initial_state=h0, state_chunk=state_chunk,
                                   return_states=True)
    _, _, st1 = ssd_triton.ssd_fwd(**t, chunk_size=16, initial_state=h0, state_chunk=16, return_states=True)
    y_ref, hT_ref = _ref(t, 16, initial_state=h0)
    assert st.shape == st1.shape == (2, 10, 2, 16, 16)
    assert _rel(y, y_ref) < 1e-5 and _rel(hT, hT_ref) < 1e-5 and _rel(st, st1) < 1e-5
    with pytest.raises(ValueError, match="state_chunk"):
        ssd_triton.ssd_fwd(**t, chunk_size=16, state_chunk=48)


# Backward (Triton kernels, triton_bwd.py): (batch, L, heads, headdim, state, groups, chunk, D?)
# Under the interpreter the long cases run in float32 only (a few seconds each); on a GPU, all.
# N = 40 walks two state blocks of the backward; chunk 128 is clamped to 64 when grads are needed.
GRAD_CASES = [(2, 70, 2, 8, 40, 1, 32, True), (1, 63, 4, 5, 6, 2, 16, False), (2, 66, 2, 32, 256, 1, 64, True),
              (1, 500, 2, 16, 16, 1, 64, True), (1, 1000, 2, 32, 8, 2, 128, True)]
GRAD_GRID = [(c, dt) for c in GRAD_CASES for dt in DTYPES if ON_GPU or dt == torch.float32 or c[1] < 100]


@pytest.mark.parametrize("b,L,h,p,n,g,chunk,with_D,dtype", [(*c, dt) for c, dt in GRAD_GRID],
                         ids=[f"B{b}-L{L}-H{h}-P{p}-N{n}-G{g}-T{c}{'' if d else '-noD'}-{str(dt)[6:]}"
                              for (b, L, h, p, n, g, c, d), dt in GRAD_GRID])
def test_gradients_match_reference(b, L, h, p, n, g, chunk, with_D, dtype):
    """Every input's gradient through the Triton backward, against autograd through the
    reference on the same (rounded) inputs in float64; y and the final state both carry gradient."""
    t = _inputs(b, L, h, p, n, g, dtype, seed=11 * L + p, requires_grad=True)
    if not with_D:
        t["D"] = None
    h0 = torch.randn(b, h, p, n, device=DEV, requires_grad=True)
    wy, wh = torch.randn(b, L, h, p, device=DEV), torch.randn(b, h, p, n, device=DEV)
    args = {k: v for k, v in {**t, "initial_state": h0}.items() if v is not None}
    y, hT = ssd_triton.ssd(**args, chunk_size=chunk, return_final_state=True)
    grads = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(args.values()))
    f64 = {k: v.detach().double().requires_grad_(True) for k, v in args.items()}
    y_r, hT_r = ssd_ref(**f64, chunk_size=chunk, return_final_state=True)
    g_r = torch.autograd.grad((y_r * wy.double()).sum() + (hT_r * wh.double()).sum(), list(f64.values()))
    tol = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for name, a, r in zip(args, grads, g_r):
        assert a.dtype == args[name].dtype and a.shape == args[name].shape, name
        assert _rel(a, r) < tol, name


def test_gradient_of_final_state_only():
    """Only the final state carries gradient (y unused): the backward gets gy = None."""
    t = _inputs(1, 50, 2, 8, 16, 1, torch.float32, seed=4, requires_grad=True)
    _, hT = ssd_triton.ssd(**t, chunk_size=16, return_final_state=True)
    wh = torch.randn_like(hT)
    grads = torch.autograd.grad((hT * wh).sum(), list(t.values()), allow_unused=True)
    _, hT_r = ssd_ref(**t, chunk_size=16, return_final_state=True)
    g_r = torch.autograd.grad((hT_r * wh).sum(), list(t.values()), allow_unused=True)
    for name, a, r in zip(t, grads, g_r):
        if r is None or name == "C" or name == "D":  # C, D do not reach the state
            assert a is None or a.abs().max() == 0, name
            continue
        assert _rel(a, r) < 1e-5, name


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


def test_int64_indexing_path(monkeypatch):
    """The 64-bit index path (taken when an offset reaches 2**31 elements, e.g. 1M steps x 4096
    channels; too big for a CPU test) gives the same forward (one-pass and N-blocked) and gradients."""
    from evalkit.kernels.ssd import triton_bwd

    monkeypatch.setattr(ssd_triton, "needs_int64", lambda *t: True)
    monkeypatch.setattr(triton_bwd, "needs_int64", lambda *t: True)
    for n in (16, 256):
        t = _inputs(2, 90, 2, 16, n, 1, torch.float32, seed=n)
        h0 = torch.randn(2, 2, 16, n, device=DEV)
        y, hT, st = ssd_triton.ssd_fwd(**t, chunk_size=16, initial_state=h0, state_chunk=32, return_states=True)
        y_ref, hT_ref = _ref(t, 16, initial_state=h0)
        assert _rel(y, y_ref) < 1e-5 and _rel(hT, hT_ref) < 1e-5, n
    t = _inputs(1, 40, 2, 8, 16, 1, torch.float32, seed=5, requires_grad=True)
    y = ssd_triton.ssd(**t, chunk_size=16)
    grads = torch.autograd.grad(y.sum(), list(t.values()))
    y_r = ssd_ref(**t, chunk_size=16)
    g_r = torch.autograd.grad(y_r.sum(), list(t.values()))
    for name, a, r in zip(t, grads, g_r):
        assert _rel(a, r) < 2e-5, name
