"""S4D: its SSM is linear and time-invariant (what sets it apart from the selective scans)."""

from __future__ import annotations

import math

import torch

from evalkit.models.native import MIXERS, NativeConfig


def _s4d():
    m = MIXERS.get("s4d")(NativeConfig.from_dict({"flavor": "debug"}), 0).double()
    m.reset_parameters(torch.Generator().manual_seed(2))
    return m


def test_ssm_is_linear_and_shift_invariant():
    m = _s4d()
    x = torch.randn(2, 64, 20, dtype=torch.float64)  # (B, d_inner, L)
    x2 = torch.randn(2, 64, 20, dtype=torch.float64)
    y, _ = m._ssm(x, False)
    y2, _ = m._ssm(x2, False)
    torch.testing.assert_close(m._ssm(3 * x - x2, False)[0], 3 * y - y2, rtol=1e-10, atol=1e-10)
    shifted = torch.nn.functional.pad(x, (5, 0))[..., :20]  # the same input, 5 steps later
    torch.testing.assert_close(m._ssm(shifted, False)[0][..., 5:], y[..., :15], rtol=1e-10, atol=1e-10)


def test_kernel_is_the_s4d_impulse_response():
    """K_l = 2 Re(Σ_n C̃_n Ā_n^l) with S4D-Lin's A_n = -1/2 + iπn at init."""
    m = _s4d()
    impulse = torch.zeros(1, 64, 6, dtype=torch.float64)
    impulse[..., 0] = 1.0
    K, _ = m._ssm(impulse, False)
    dt = torch.exp(m.log_dt)[:, None]
    A = torch.complex(torch.full((64, 4), -0.5, dtype=torch.float64),
                      math.pi * torch.arange(4, dtype=torch.float64).expand(64, 4))
    C = torch.view_as_complex(m.C.contiguous()) * (torch.exp(dt * A) - 1) / A
    for lag in range(6):
        want = 2 * (C * torch.exp(dt * A * lag)).sum(-1).real
        torch.testing.assert_close(K[0, :, lag], want, rtol=1e-10, atol=1e-12)
