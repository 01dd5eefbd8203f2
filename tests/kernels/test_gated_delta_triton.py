"""Triton gated delta rule (evalkit/kernels/gated_delta/triton*.py) against the PyTorch reference
on fresh random inputs: outputs, final state, gradients of every input, the decode step, and
decode-vs-parallel parity.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set below before
triton is imported) at small sizes, in float32 and float16 (bf16 dots are wrong in the
interpreter); on a GPU the same tests also run bf16. The reference runs in float64 on the same
(rounded) inputs.
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
from evalkit.kernels.gated_delta import (gated_delta_ref, gated_delta_rule, gated_delta_step,  # noqa: E402
                                         gated_delta_step_ref)
from evalkit.kernels.gated_delta import triton as gdn_triton  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# relative error ‖out − ref‖ / ‖ref‖ allowed per input dtype (the gap is the kernel's 16-bit dot
# operands, W_k / U / states stored in the input dtype, and fp32 summation order)
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
GTOL = {torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(b, L, h, n, p, dtype, seed, requires_grad=False):
    """q, k L2-normalised (q scaled by n^-1/2) as the mixer gives them; decays g ≤ 0, β ∈ (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = dict(q=F.normalize(r(b, L, h, n), dim=-1) * n ** -0.5, k=F.normalize(r(b, L, h, n), dim=-1),
             v=r(b, L, h, p), g=-F.softplus(r(b, L, h) - 1.0), beta=torch.sigmoid(r(b, L, h)))
    t = {k: v.to(dtype if k in "qkv" else torch.float32).to(DEV) for k, v in t.items()}
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


# (batch, L, heads, key dim N, value dim P, chunk): odd lengths, dims that are not powers of two
CASES = [(1, 63, 2, 16, 32, 32), (2, 200, 2, 32, 20, 64), (1, 500, 1, 8, 5, 32)]
IDS = [f"B{b}-L{L}-H{h}-N{n}-P{p}-T{c}" for b, L, h, n, p, c in CASES]


@pytest.mark.parametrize("b,L,h,n,p,chunk", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(b, L, h, n, p, chunk, dtype):
    t = _inputs(b, L, h, n, p, dtype, seed=L * 7 + n)
    h0 = torch.randn(b, h, p, n, device=DEV) if L != 200 else None
    o, S = gdn_triton.gated_delta_rule(**t, chunk_size=chunk, initial_state=h0, return_final_state=True)
    f64 = {k: v.double() for k, v in t.items()}
    o_r, S_r = gated_delta_ref(**f64, chunk_size=chunk, initial_state=h0, return_final_state=True)
    assert o.dtype == dtype and o.shape == (b, L, h, p)
    assert S.dtype == torch.float32 and S.shape == (b, h, p, n)
    assert _rel(o, o_r) < TOL[dtype]
    assert _rel(S, S_r) < TOL[dtype]


def test_strided_inputs_and_strong_decay():
    """q, k, v as views into one projection (the mixer's layout), decays far below fp32's range."""
    b, L, h, n, p = 1, 70, 2, 16, 8
    proj = torch.randn(b, L, h, 2 * n + p, device=DEV)
    q, k, v = proj.split([n, n, p], dim=-1)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    g = torch.full((b, L, h), -60.0, device=DEV)
    g[:, ::3] = -0.1
    beta = torch.rand(b, L, h, device=DEV)
    o = gdn_triton.gated_delta_rule(q, k, v, g, beta, chunk_size=32)
    o_r = gated_delta_ref(q.double(), k.double(), v.double(), g.double(), beta.double(), chunk_size=32)
    assert _rel(o, o_r) < 2e-5


# Backward (triton_bwd.py). Under the interpreter fp16 runs on the short case only.
GRAD_CASES = [(1, 63, 2, 16, 32, 32), (1, 200, 1, 20, 40, 64), (2, 77, 2, 8, 5, 32)]
GRAD_GRID = [(c, dt) for c in GRAD_CASES for dt in DTYPES if ON_GPU or dt == torch.float32 or c[1] < 64]


@pytest.mark.parametrize("b,L,h,n,p,chunk,dtype", [(*c, dt) for c, dt in GRAD_GRID],
                         ids=[f"B{b}-L{L}-H{h}-N{n}-P{p}-T{c}-{str(dt)[6:]}"
                              for (b, L, h, n, p, c), dt in GRAD_GRID])
def test_gradients_match_reference(b, L, h, n, p, chunk, dtype):
    """Every input's gradient (q, k, v, g, β, initial state) through the Triton backward, against
    autograd through the reference in float64; o and the final state both carry gradient."""
    t = _inputs(b, L, h, n, p, dtype, seed=11 * L + p, requires_grad=True)
    h0 = torch.randn(b, h, p, n, device=DEV, requires_grad=True)
    args = {**t, "initial_state": h0}
    o, S = gdn_triton.gated_delta_rule(**args, chunk_size=chunk, return_final_state=True)
    wo, ws = torch.randn(b, L, h, p, device=DEV), torch.randn(b, h, p, n, device=DEV)
    grads = torch.autograd.grad((o.float() * wo).sum() + (S * ws).sum(), list(args.values()))
    f64 = {k: v.detach().double().requires_grad_(True) for k, v in args.items()}
    o_r, S_r = gated_delta_ref(**f64, chunk_size=chunk, return_final_state=True)
    g_r = torch.autograd.grad((o_r * wo.double()).sum() + (S_r * ws.double()).sum(), list(f64.values()))
    for name, a, r in zip(args, grads, g_r):
        assert a.dtype == args[name].dtype and a.shape == args[name].shape, name
        assert _rel(a, r) < GTOL[dtype], name


def test_gradient_of_final_state_only():
    """Only the final state carries gradient (o unused, no initial state): the backward gets
    go = None; q does not reach the state."""
    t = _inputs(1, 50, 2, 8, 16, torch.float32, seed=4, requires_grad=True)
    _, S = gdn_triton.gated_delta_rule(**t, chunk_size=32, return_final_state=True)
    ws = torch.randn_like(S)
    grads = torch.autograd.grad((S * ws).sum(), list(t.values()), allow_unused=True)
    _, S_r = gated_delta_ref(**t, chunk_size=32, return_final_state=True)
    g_r = torch.autograd.grad((S_r * ws).sum(), list(t.values()), allow_unused=True)
    for name, a, r in zip(t, grads, g_r):
        if name == "q":
            assert a is None or a.abs().max() == 0, name
            continue
        assert _rel(a, r) < 5e-5, name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_step_matches_reference(monkeypatch, dtype):
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    gen = torch.Generator().manual_seed(3)
    b, h, n, p = 2, 3, 20, 5
    r = lambda *s: torch.randn(*s, generator=gen).to(DEV)  # noqa: E731
    state = r(b, h, p, n)
    kw = dict(q=F.normalize(r(b, h, n), dim=-1).to(dtype), k=F.normalize(r(b, h, n), dim=-1).to(dtype),
              v=r(b, h, p).to(dtype), g=-F.softplus(r(b, h)), beta=torch.sigmoid(r(b, h)))
    before = dispatch.kernel_calls()
    o, S = gated_delta_step(**kw, state=state)
    assert dispatch.kernel_calls() == before + 1
    o_r, S_r = gated_delta_step_ref(**{k: v.double() for k, v in kw.items()}, state=state.double())
    assert o.dtype == torch.float32 and S.dtype == torch.float32 and S.shape == state.shape
    assert _rel(o, o_r) < 1e-6 and _rel(S, S_r) < 1e-6


def test_decode_steps_match_parallel_kernel(monkeypatch):
    """Stepping the kernel token by token from the parallel kernel's state after a prefix
    reproduces the parallel kernel's outputs and final state over the whole sequence."""
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    b, L, h, n, p, cut = 2, 45, 2, 16, 8, 37
    t = _inputs(b, L, h, n, p, torch.float32, seed=9)
    o, S_end = gated_delta_rule(**t, chunk_size=32, return_final_state=True)
    _, S = gated_delta_rule(**{k: v[:, :cut] for k, v in t.items()}, chunk_size=32, return_final_state=True)
    outs = []
    for i in range(cut, L):
        o_i, S = gated_delta_step(*(t[x][:, i] for x in ("q", "k", "v", "g", "beta")), state=S)
        outs.append(o_i)
    assert _rel(torch.stack(outs, 1), o[:, cut:]) < 1e-5
    assert _rel(S, S_end) < 1e-5


def test_mixer_uses_kernel_and_matches_reference(monkeypatch):
    """The gated_deltanet mixer needs no change: its forward and input gradient on the kernel
    path match EVALKIT_KERNELS=ref."""
    from evalkit.models.native import MIXERS, NativeConfig

    cfg = NativeConfig.from_dict(dict(vocab_size=32, d_model=32, n_layers=1, n_heads=2, d_state=16,
                                      headdim=16, chunk_size=32, max_context=256))
    mixer = MIXERS.get("gated_deltanet")(cfg, layer_idx=0)
    mixer.reset_parameters(torch.Generator().manual_seed(0))
    mixer = mixer.to(DEV)
    x = torch.randn(2, 45, 32, device=DEV, requires_grad=True)
    outs = {}
    for mode in ("ref", "triton"):
        monkeypatch.setenv("EVALKIT_KERNELS", mode)
        before = dispatch.kernel_calls()
        y = mixer(x)
        (gx,) = torch.autograd.grad((y * torch.linspace(-1, 1, 32, device=DEV)).sum(), x)
        outs[mode] = (y.detach(), gx, dispatch.kernel_calls() - before)
    assert outs["ref"][2] == 0 and outs["triton"][2] == 1
    assert _rel(outs["triton"][0], outs["ref"][0]) < 1e-5
    assert _rel(outs["triton"][1], outs["ref"][1]) < 1e-4


def test_dispatch_switch(monkeypatch):
    """EVALKIT_KERNELS picks the path; auto runs the kernel on CUDA only."""
    t = _inputs(1, 40, 2, 16, 8, torch.float32, seed=5)
    monkeypatch.setenv("EVALKIT_KERNELS", "ref")
    before = dispatch.kernel_calls()
    o_ref = gated_delta_rule(**t, chunk_size=32)
    assert dispatch.kernel_calls() == before
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    o = gated_delta_rule(**t, chunk_size=32)
    assert dispatch.kernel_calls() == before + 1
    assert _rel(o, o_ref) < 2e-5
    monkeypatch.setenv("EVALKIT_KERNELS", "auto")
    gated_delta_rule(**t, chunk_size=32)
    assert dispatch.kernel_calls() == before + 1 + int(ON_GPU)


def test_int64_indexing_path(monkeypatch):
    """The 64-bit index path (taken when an offset reaches 2**31 elements; too big for a CPU test)
    gives the same output, final state and gradients."""
    from evalkit.kernels.gated_delta import triton_bwd

    monkeypatch.setattr(gdn_triton, "needs_int64", lambda *t: True)
    monkeypatch.setattr(triton_bwd, "needs_int64", lambda *t: True)
    t = _inputs(1, 70, 2, 16, 32, torch.float32, seed=3, requires_grad=True)
    o, hT = gdn_triton.gated_delta_rule(**t, chunk_size=32, return_final_state=True)
    wo, wh = torch.randn_like(o), torch.randn_like(hT)
    g = torch.autograd.grad((o * wo).sum() + (hT * wh).sum(), list(t.values()))
    f64 = {k: v.detach().double().requires_grad_(True) for k, v in t.items()}
    o_r, hT_r = gated_delta_ref(**f64, chunk_size=32, return_final_state=True)
    g_r = torch.autograd.grad((o_r * wo.double()).sum() + (hT_r * wh.double()).sum(), list(f64.values()))
    assert _rel(o, o_r) < TOL[torch.float32] and _rel(hT, hT_r) < TOL[torch.float32]
    for name, a, r in zip(t, g, g_r):
        assert _rel(a, r) < GTOL[torch.float32], name
