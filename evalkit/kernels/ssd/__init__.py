"""Mamba-2 state-space duality (SSD) scan: ``ssd`` dispatches to the fastest implementation."""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import use_kernel
from evalkit.kernels.ssd.ref import ssd_naive, ssd_ref

__all__ = ["ssd", "ssd_naive", "ssd_ref"]


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan with the semantics of :func:`ssd_ref` (see there for shapes).

    Runs the Triton kernel (``triton.py``) on CUDA and the reference elsewhere; the environment
    variable ``EVALKIT_KERNELS=auto|ref|triton`` forces either (see ``evalkit.kernels.dispatch``).
    """
    if use_kernel(x):
        from evalkit.kernels.ssd import triton as _triton  # lazy: triton is heavy to import

        return _triton.ssd(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state,
                           return_final_state=return_final_state)
    return ssd_ref(
        x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state,
        return_final_state=return_final_state,
    )
