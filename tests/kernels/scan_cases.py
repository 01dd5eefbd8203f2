"""Inputs, the reference and the error measure shared by the CUDA selective-scan test files."""

from __future__ import annotations

import torch

from evalkit.kernels.selective_scan import selective_scan_ref


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(b, d, L, n, dtype, seed, full=True, dev="cuda"):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = dict(u=r(b, d, L).to(dtype), delta=(r(b, d, L) - 1.0).to(dtype),
             A=-torch.rand(d, n, generator=gen) * 4 - 0.1, B=r(b, n, L).to(dtype), C=r(b, n, L).to(dtype))
    if full:
        t.update(D=r(d), z=r(b, d, L).to(dtype), delta_bias=r(d) * 0.5)
    return {k: v.to(dev) for k, v in t.items()}


def ref(t, **kw):
    return selective_scan_ref(**{k: v.float() for k, v in t.items()}, return_final_state=True, **kw)
