"""Mamba-2 state-space duality (SSD) scan: ``ssd`` dispatches to the fastest implementation."""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import opaque, use_kernel
from evalkit.kernels.ssd.ref import ssd_naive, ssd_ref, ssd_step_ref

__all__ = ["ssd", "ssd_naive", "ssd_ref", "ssd_step", "ssd_step_ref"]


@opaque
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


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step with the semantics of :func:`ssd_step_ref` (see there for shapes):
    (y · silu(z), new state). The Triton kernel (``triton_step.py``) runs for CUDA tensors with a
    float32 state, the reference otherwise; ``EVALKIT_KERNELS`` forces either."""
    if use_kernel(x, state):
        from evalkit.kernels.ssd import triton_step  # lazy: triton is heavy to import

        return triton_step.ssd_step(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    return ssd_step_ref(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
