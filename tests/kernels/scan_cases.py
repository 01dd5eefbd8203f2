"""Inputs, the reference and the error measure shared by the CUDA selective-scan test files."""

from __future__ import annotations

import torch

from evalkit.kernels import dispatch
from evalkit.kernels.selective_scan import selective_scan, selective_scan_ref


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


def mixer_views_grads(b, d, L, n, dev):
    """The public ``selective_scan`` through autograd on the native Mamba mixer's views (u, z halves of one tensor;
    B, C slices of another) in bf16: asserts that the CUDA training pair ran and that every gradient is the
    reference's; returns the output and the reference's."""
    t = inputs(b, d, L, n, torch.bfloat16, seed=22, dev=dev)
    xz = torch.randn(b, 2 * d, L, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dbc = torch.randn(b, 8 + 2 * n, L, device=dev, dtype=torch.bfloat16, requires_grad=True)
    leaf = {k: t[k].clone().requires_grad_(True) for k in ("delta", "A", "D", "delta_bias")}
    u, z = xz.chunk(2, dim=1)
    _, B, C = dbc.split([8, n, n], dim=1)
    before = dispatch.variant_calls()
    out = selective_scan(u, leaf["delta"], leaf["A"], B, C, D=leaf["D"], z=z, delta_bias=leaf["delta_bias"])
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out.float() * w.float()).sum(), [xz, dbc, *leaf.values()])
    ran = {k for k, v in dispatch.variant_calls().items() if v > before.get(k, 0)}
    assert ran == {"selective_scan:cuda", "selective_scan_bwd:cuda"}
    ref = [x.detach().float().requires_grad_(True) for x in (xz, dbc, *leaf.values())]
    ur, zr = ref[0].chunk(2, dim=1)
    _, Br, Cr = ref[1].split([8, n, n], dim=1)
    out_r = selective_scan_ref(ur, ref[2], ref[3], Br, Cr, D=ref[4], z=zr, delta_bias=ref[5])
    for a, r in zip(grads, torch.autograd.grad((out_r * w.float()).sum(), ref)):
        assert rel(a, r) < 3e-2
    return out, out_r
