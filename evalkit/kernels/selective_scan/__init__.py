"""Mamba-1 selective scan: ``selective_scan`` dispatches to the fastest available implementation."""

from __future__ import annotations

import torch

from evalkit.kernels.selective_scan.ref import selective_scan_naive, selective_scan_ref

__all__ = ["selective_scan", "selective_scan_naive", "selective_scan_ref"]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the semantics of :func:`selective_scan_ref` (see there for shapes)."""
    # The CUDA (Triton) kernel plugs in here: `if u.is_cuda: return triton.selective_scan(...)`.
    return selective_scan_ref(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        initial_state=initial_state, return_final_state=return_final_state, chunk_size=chunk_size,
    )
