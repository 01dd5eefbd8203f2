"""Mamba-1 selective scan: ``selective_scan`` dispatches to the fastest available implementation."""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import use_kernel
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
    """Selective scan with the semantics of :func:`selective_scan_ref` (see there for shapes).

    Runs the Triton kernel (``triton.py``) on CUDA and the reference elsewhere; the environment
    variable ``EVALKIT_KERNELS=auto|ref|triton`` forces either (see ``evalkit.kernels.dispatch``).
    ``chunk_size`` is the reference's; the kernel picks its own (it changes rounding only).
    """
    if use_kernel(u):
        from evalkit.kernels.selective_scan import triton as _triton  # lazy: triton is heavy

        return _triton.selective_scan(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            initial_state=initial_state, return_final_state=return_final_state,
        )
    return selective_scan_ref(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        initial_state=initial_state, return_final_state=return_final_state, chunk_size=chunk_size,
    )
