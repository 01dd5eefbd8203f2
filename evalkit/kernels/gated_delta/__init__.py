"""Gated delta rule (Gated DeltaNet): ``gated_delta_rule`` and ``gated_delta_step`` dispatch to the
Triton kernels (``triton.py`` with ``triton_bwd.py``; ``triton_step.py``) on CUDA and to the
PyTorch references (``ref.py``) elsewhere; ``EVALKIT_KERNELS=auto|ref|triton`` forces either
(see ``evalkit.kernels.dispatch``)."""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import opaque, use_kernel
from evalkit.kernels.gated_delta.ref import gated_delta_naive, gated_delta_ref
from evalkit.kernels.gated_delta.ref import gated_delta_step as gated_delta_step_ref

__all__ = ["gated_delta_naive", "gated_delta_ref", "gated_delta_rule", "gated_delta_step",
           "gated_delta_step_ref"]


@opaque
def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule with the semantics of :func:`gated_delta_ref` (see there for
    shapes). The kernel picks its own chunk (32 or 64; the chunk changes rounding only) and
    returns the final state in float32; its backward is Triton too."""
    if use_kernel(v):
        from evalkit.kernels.gated_delta import triton as _triton  # lazy: triton is heavy to import

        return _triton.gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=initial_state,
                                        return_final_state=return_final_state)
    return gated_delta_ref(q, k, v, g, beta, chunk_size, initial_state=initial_state,
                           return_final_state=return_final_state)


def gated_delta_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step with the semantics of :func:`gated_delta_step_ref` (see there for
    shapes): (o, new state). The Triton kernel runs for CUDA tensors with a float32 state, the
    reference otherwise; ``EVALKIT_KERNELS`` forces either."""
    if use_kernel(v, state):
        from evalkit.kernels.gated_delta import triton_step  # lazy: triton is heavy to import

        return triton_step.gated_delta_step(q, k, v, g, beta, state)
    return gated_delta_step_ref(q, k, v, g, beta, state)
