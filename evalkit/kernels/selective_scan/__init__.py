"""Mamba-1 selective scan: ``selective_scan`` dispatches to the fastest available implementation."""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import opaque, use_kernel
from evalkit.kernels.selective_scan.ref import (selective_scan_naive, selective_scan_ref,
                                                selective_scan_step_ref)

__all__ = ["selective_scan", "selective_scan_naive", "selective_scan_ref", "selective_scan_step",
           "selective_scan_step_ref"]


@opaque
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

    Runs the kernels on CUDA (the NVRTC-compiled CUDA C++ forward, ``cuda.py``, and in training its
    backward, ``cuda_bwd.py``, where they apply, else Triton's ``triton.py`` / ``triton_bwd.py``) and the
    reference elsewhere; the environment variable ``EVALKIT_KERNELS=auto|ref|triton`` forces either (see
    ``evalkit.kernels.dispatch``), ``EVALKIT_SCAN_CUDA=0`` keeps both on Triton,
    ``EVALKIT_SCAN_CUDA_BWD=0`` only the backward.
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


def selective_scan_step(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step with the semantics of :func:`selective_scan_step_ref` (see there for
    shapes): (y, new state). The Triton kernel (``triton_step.py``) runs for CUDA tensors with a
    float32 state, the reference otherwise; ``EVALKIT_KERNELS`` forces either."""
    if use_kernel(u, state):
        from evalkit.kernels.selective_scan import triton_step  # lazy: triton is heavy

        return triton_step.selective_scan_step(state, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                               delta_softplus=delta_softplus)
    return selective_scan_step_ref(state, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                   delta_softplus=delta_softplus)
