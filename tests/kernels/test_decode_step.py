"""Decode-step kernels (``<op>/triton_step.py``) against their references, and decode-vs-parallel
parity: stepping a kernel token by token must reproduce the parallel kernel's outputs and final
state, and a native mixer's ``step`` on the kernel path must reproduce its parallel forward.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before triton
is imported), in float32 and float16; on a GPU also bf16.
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
from evalkit.kernels.selective_scan import (selective_scan_ref, selective_scan_step,  # noqa: E402
                                            selective_scan_step_ref)
from evalkit.kernels.selective_scan import triton as ss_triton  # noqa: E402
from evalkit.kernels.ssd import ssd_ref, ssd_step, ssd_step_ref  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _gen(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda *s: torch.randn(*s, generator=g).to(DEV)


@pytest.mark.parametrize("b,d,n,full", [(2, 5, 16, True), (1, 70, 4, False), (3, 8, 3, True)],
                         ids=["B2-D5-N16-full", "B1-D70-N4-bare", "B3-D8-N3-full"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_selective_scan_step_matches_reference(monkeypatch, b, d, n, full, dtype):
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    r = _gen(b * 100 + d + n)
    state = r(b, d, n)
    kw = dict(u=r(b, d).to(dtype), delta=(r(b, d) - 1).to(dtype), A=-r(d, n).abs() - 0.1,
              B=r(b, n).to(dtype), C=r(b, n).to(dtype))
    if full:
        kw.update(D=r(d), z=r(b, d).to(dtype), delta_bias=r(d) * 0.5)
    before = dispatch.kernel_calls()
    y, h = selective_scan_step(state, **kw)
    assert dispatch.kernel_calls() == before + 1
    y_r, h_r = selective_scan_step_ref(state, **{k: v.float() for k, v in kw.items()})
    assert y.dtype == dtype and y.shape == (b, d) and h.dtype == torch.float32 and h.shape == (b, d, n)
    assert _rel(y, y_r) < TOL[dtype] and _rel(h, h_r) < 1e-6


@pytest.mark.parametrize("b,h,p,n,g,full", [(2, 4, 8, 16, 2, True), (1, 3, 5, 6, 1, False),
                                            (2, 2, 64, 128, 1, True)],
                         ids=["B2-H4-P8-N16-G2-full", "B1-H3-P5-N6-bare", "B2-H2-P64-N128-full"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ssd_step_matches_reference(monkeypatch, b, h, p, n, g, full, dtype):
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    r = _gen(b * 100 + h + p + n)
    state = r(b, h, p, n)
    kw = dict(x=r(b, h, p).to(dtype), dt=(r(b, h) - 1).to(dtype), A=-r(h).abs() - 0.1,
              B=r(b, g, n).to(dtype), C=r(b, g, n).to(dtype))
    if full:
        kw.update(D=r(h), z=r(b, h, p).to(dtype), dt_bias=r(h) * 0.5, dt_softplus=True)
    else:
        kw["dt"] = F.softplus(kw["dt"].float()).to(dtype)
    before = dispatch.kernel_calls()
    y, s = ssd_step(state, **kw)
    assert dispatch.kernel_calls() == before + 1
    y_r, s_r = ssd_step_ref(state, **{k: v.float() if torch.is_tensor(v) else v for k, v in kw.items()})
    assert y.dtype == dtype and y.shape == (b, h, p) and s.dtype == torch.float32
    assert _rel(y, y_r) < TOL[dtype] and _rel(s, s_r) < 1e-6


def test_selective_scan_decode_matches_parallel_kernel(monkeypatch):
    """Prefill L0 steps with the parallel kernel, step the rest with the step kernel: outputs and
    final state equal the parallel kernel's over the whole sequence."""
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    b, d, n, L, L0 = 2, 6, 8, 40, 29
    r = _gen(7)
    t = dict(u=r(b, d, L), delta=r(b, d, L) - 1, A=-r(d, n).abs() - 0.1, B=r(b, n, L), C=r(b, n, L),
             D=r(d), z=r(b, d, L), delta_bias=r(d) * 0.5)
    y, hT = ss_triton.selective_scan(**t, return_final_state=True)
    pre = {k: (v[..., :L0] if v.dim() == 3 else v) for k, v in t.items()}
    y0, h = ss_triton.selective_scan(**pre, return_final_state=True)
    ys = [y0]
    for i in range(L0, L):
        y_t, h = selective_scan_step(h, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i],
                                     t["C"][..., i], D=t["D"], z=t["z"][..., i], delta_bias=t["delta_bias"])
        ys.append(y_t[..., None])
    assert _rel(torch.cat(ys, -1), y) < 1e-5 and _rel(h, hT) < 1e-5
    assert _rel(y, selective_scan_ref(**t)) < 1e-5


def test_ssd_decode_matches_parallel(monkeypatch):
    """Stepping the SSD step kernel from the zero state reproduces the chunked scan."""
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    b, L, h, p, n = 2, 21, 3, 8, 16
    r = _gen(9)
    x, dt, A = r(b, L, h, p), F.softplus(r(b, L, h) - 1), -r(h).abs() - 0.1
    B, C, D = r(b, L, 1, n), r(b, L, 1, n), r(h)
    y, sT = ssd_ref(x, dt, A, B, C, 16, D=D, return_final_state=True)
    s = torch.zeros(b, h, p, n, device=DEV)
    ys = []
    for i in range(L):
        y_t, s = ssd_step(s, x[:, i], dt[:, i], A, B[:, i], C[:, i], D=D)
        ys.append(y_t)
    assert _rel(torch.stack(ys, 1), y) < 1e-5 and _rel(s, sT) < 1e-5


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_mixer_step_on_kernels_matches_forward(monkeypatch, name):
    """A native mixer with EVALKIT_KERNELS=triton: prefill, then ``step`` (the step kernel) token
    by token equals the parallel forward (the scan kernel), in float32."""
    from evalkit.models.native import MIXERS, NativeConfig

    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    cfg = NativeConfig.from_dict({"flavor": "debug", "chunk_size": 16, "d_model": 16, "d_state": 4})
    torch.manual_seed(0)
    m = MIXERS.get(name)(cfg, layer_idx=0)
    m.reset_parameters(torch.Generator().manual_seed(1))
    m = m.to(DEV)
    x = torch.randn(2, 24, cfg.d_model, generator=torch.Generator().manual_seed(3)).to(DEV)
    before = dispatch.kernel_calls()
    with torch.no_grad():
        y = m(x)
        _, state = m.prefill(x[:, :17])
        steps = []
        for i in range(17, 24):
            y_t, state = m.step(x[:, i], state)
            steps.append(y_t)
    assert dispatch.kernel_calls() - before == 2 * 2 + 7  # two parallel scans and their convs, seven decode steps
    assert _rel(torch.stack(steps, 1), y[:, 17:]) < 1e-5
