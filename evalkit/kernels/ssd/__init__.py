"""Mamba-2 state-space duality (SSD) scan: ``ssd`` dispatches to the fastest implementation."""

from __future__ import annotations

import torch

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
    """Chunked SSD scan with the semantics of :func:`ssd_ref` (see there for shapes)."""
    # The CUDA (Triton) kernel plugs in here: `if x.is_cuda: return triton.ssd(...)`.
    return ssd_ref(
        x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state,
        return_final_state=return_final_state,
    )
