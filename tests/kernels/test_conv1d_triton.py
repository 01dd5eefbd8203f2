"""Triton causal depthwise conv1d + SiLU (evalkit/kernels/conv1d/triton.py) against the PyTorch reference on
fresh random inputs: outputs, every gradient (input, weight, bias, initial state), both layouts the mixers pass
(channel-major and a (B, L, C) tensor's transpose), widths 1-4, odd lengths, lengths shorter than the width,
the final conv state, and the dispatch (which path ran, the mixers' outputs with the kernel vs the reference).

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported) at small sizes; on a GPU the same tests run, with bf16 too. The reference runs in float64.
"""

from __future__ import annotations

import zlib

import pytest
import torch

triton = pytest.importorskip("triton")

from evalkit.kernels import dispatch  # noqa: E402
from evalkit.kernels.conv1d import causal_conv1d, causal_conv1d_ref  # noqa: E402
from evalkit.kernels.conv1d import triton as conv_triton  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEV = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}  # relative, the output's rounding
# (batch, channels, length, width): odd sizes, more channels than one tile, L < W - 1, L not a tile multiple
CASES = [(2, 40, 37, 4), (1, 7, 130, 4), (3, 33, 2, 4), (1, 5, 1, 4), (2, 64, 70, 3), (1, 9, 20, 2),
         (1, 6, 11, 1)]
IDS = [f"B{b}-C{c}-L{L}-W{w}" for b, c, L, w in CASES]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(Bn, C, L, W, dtype, seed, channels_last=False, h0=True, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(Bn, L, C, generator=gen).transpose(1, 2) if channels_last else torch.randn(Bn, C, L, generator=gen)
    t = dict(x=x, weight=torch.randn(C, W, generator=gen) * W ** -0.5,
             bias=torch.randn(C, generator=gen) if bias else None,
             initial_state=torch.randn(Bn, C, W - 1, generator=gen) if h0 else None)
    out = {}
    for k, v in t.items():
        if v is None:
            out[k] = None
            continue
        v = v.to(dtype if k in ("x", "initial_state") else torch.float32).to(DEV)
        out[k] = v.requires_grad_(True)
    return out


def _run(fn, t, activation, gy):
    y = fn(t["x"], t["weight"], t["bias"], t["initial_state"], activation)
    y.backward(gy)
    grads = {k: v.grad for k, v in t.items() if v is not None}
    return y.detach(), grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["channel-major", "channels-last"])
@pytest.mark.parametrize("activation", ["silu", None])
def test_kernel_matches_reference(case, dtype, layout, activation) -> None:
    Bn, C, L, W = case
    seed = zlib.crc32(repr((case, layout, activation)).encode())  # fresh per case, the same in every run
    t = _inputs(Bn, C, L, W, dtype, seed, channels_last=layout == "channels-last")
    r = {k: (v.detach().double().requires_grad_(True) if v is not None else None) for k, v in t.items()}
    gy = torch.randn(Bn, C, L, generator=torch.Generator().manual_seed(seed + 1)).to(DEV)
    y, g = _run(lambda *a: conv_triton.causal_conv1d(*a[:4], a[4] == "silu"), t, activation, gy.to(dtype))
    yr, gr = _run(causal_conv1d_ref, r, activation, gy.to(dtype).double())
    assert y.dtype == dtype and y.shape == (Bn, C, L)
    assert y.stride() == t["x"].stride() or L == 1 or C == 1  # the input's layout
    assert _rel(y, yr) < TOL[dtype]
    for k in gr:  # gradients: the output gradient is rounded to dtype on both sides, sums in fp32 vs fp64
        assert g[k].dtype == t[k].dtype, k
        assert _rel(g[k], gr[k]) < 4 * TOL[dtype], (k, _rel(g[k], gr[k]))


@pytest.mark.parametrize("layout", ["x", "gy"])
@pytest.mark.parametrize("segments", ["one", "many"])
def test_backward_layouts_and_segments(layout, segments, monkeypatch) -> None:
    """The backward with the output gradient in the other layout than x, worked in either's (``BWD_LAYOUT``),
    and with the weight-gradient pass split into one or many segments per row (their partials summed)."""
    monkeypatch.setattr(conv_triton, "BWD_LAYOUT", layout)
    if segments == "many":
        monkeypatch.setattr(conv_triton, "MIN_TILES", 1)
        monkeypatch.setattr(conv_triton, "TARGET_PROGRAMS", 10**6)
    Bn, C, L = 2, 20, 300
    assert conv_triton._segments(Bn, C, L, *conv_triton.TILES[False])[0] == (1 if segments == "one" else 3)
    for last in (False, True):
        t = _inputs(Bn, C, L, 4, torch.float32, 11, channels_last=last)
        r = {k: v.detach().double().requires_grad_(True) for k, v in t.items()}
        g0 = torch.randn(Bn, L, C, generator=torch.Generator().manual_seed(2)).to(DEV)
        gy = g0.transpose(1, 2) if not last else g0.transpose(1, 2).contiguous()  # the other layout than x's
        _, g = _run(lambda *a: conv_triton.causal_conv1d(*a[:4], True), t, "silu", gy)
        _, gr = _run(causal_conv1d_ref, r, "silu", gy.double())
        for k in gr:
            assert _rel(g[k], gr[k]) < 1e-5, (last, k, _rel(g[k], gr[k]))


@pytest.mark.parametrize("h0", [True, False], ids=["h0", "zeros"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_optional_operands_and_final_state(h0, bias) -> None:
    t = _inputs(2, 12, 9, 4, torch.float32, 5, h0=h0, bias=bias)
    args = (t["x"], t["weight"], t["bias"], t["initial_state"])
    y = conv_triton.causal_conv1d(*args, True)
    yr, tail = causal_conv1d_ref(*args, "silu", return_final_state=True)
    assert _rel(y, yr) < 1e-5
    assert torch.equal(tail, (t["x"] if not h0 else torch.cat([t["initial_state"], t["x"]], 2))[:, :, -3:])


def test_dispatch_runs_the_kernel_when_forced(monkeypatch) -> None:
    """EVALKIT_KERNELS=triton runs the kernel (recorded as causal_conv1d:triton), =ref the reference; both give
    the same output and final state, and the final state continues a split sequence exactly."""
    t = _inputs(1, 10, 23, 4, torch.float32, 3, h0=False)
    x, w, b = t["x"].detach(), t["weight"].detach(), t["bias"].detach()
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    before = dispatch.variant_calls().get("causal_conv1d:triton", 0)
    y, tail = causal_conv1d(x, w, b, return_final_state=True)
    assert dispatch.variant_calls().get("causal_conv1d:triton", 0) == before + 1
    y1, s1 = causal_conv1d(x[:, :, :15], w, b, return_final_state=True)
    y2, s2 = causal_conv1d(x[:, :, 15:], w, b, initial_state=s1, return_final_state=True)
    monkeypatch.setenv("EVALKIT_KERNELS", "ref")
    yr, tailr = causal_conv1d(x, w, b, return_final_state=True)
    assert dispatch.variant_calls().get("causal_conv1d:triton", 0) == before + 3  # not the reference's call
    assert _rel(y, yr) < 1e-5 and torch.equal(tail, tailr) and torch.equal(s2, tailr)
    assert _rel(torch.cat([y1, y2], 2), yr) < 1e-5


def test_wider_convs_run_the_reference(monkeypatch) -> None:
    """Widths past the kernels' 4 run the reference even when the kernels are forced; the kernel refuses them."""
    t = _inputs(1, 6, 12, 6, torch.float32, 9, h0=False)
    x, w, b = t["x"].detach(), t["weight"].detach(), t["bias"].detach()
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    before = dispatch.variant_calls().get("causal_conv1d:triton", 0)
    assert torch.equal(causal_conv1d(x, w, b), causal_conv1d_ref(x, w, b))
    assert dispatch.variant_calls().get("causal_conv1d:triton", 0) == before
    with pytest.raises(ValueError, match="width 6"):
        conv_triton.causal_conv1d(x, w, b, None, True)


def test_unknown_activation_is_refused() -> None:
    x = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, torch.zeros(2, 4), activation="relu")


@pytest.mark.parametrize("ssm", ["mamba", "mamba2", "s4d"])
def test_mixers_with_the_kernel_match_the_reference(ssm, monkeypatch) -> None:
    """A debug-flavor model's logits and parameter gradients with the conv kernel forced (every other op on
    its reference) equal the all-reference model's."""
    from evalkit.models.native.config import NativeConfig
    from evalkit.models.native.lm import NativeLM

    cfg = NativeConfig(**{**dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_state=8, headdim=16,
                                 chunk_size=16, max_context=256), "ssm": ssm})
    m = NativeLM(cfg, seed=0).to(DEV)
    ids = torch.randint(0, 64, (2, 45), generator=torch.Generator().manual_seed(1)).to(DEV)
    out = {}
    for mode in ("ref", "conv"):
        monkeypatch.setenv("EVALKIT_KERNELS", "ref")
        if mode == "conv":
            import evalkit.kernels.conv1d as conv_pkg
            monkeypatch.setattr(conv_pkg, "use_kernel", lambda x, state=None: True)
        m.zero_grad()
        before = dispatch.variant_calls().get("causal_conv1d:triton", 0)
        logits = m(ids)
        ran = dispatch.variant_calls().get("causal_conv1d:triton", 0) - before
        assert ran == (cfg.n_layers if mode == "conv" else 0)
        logits.float().square().mean().backward()
        out[mode] = (logits.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None])
    assert _rel(out["conv"][0], out["ref"][0]) < 1e-5
    assert len(out["conv"][1]) == len(out["ref"][1])
    for a, b in zip(out["conv"][1], out["ref"][1]):
        assert _rel(a, b) < 1e-4
