"""Causal depthwise conv1d with the SiLU after it (Mamba's short convolution): ``causal_conv1d`` dispatches to
the Triton kernels (``triton.py``, forward and backward) on CUDA and to the PyTorch reference (``ref.py``)
elsewhere; ``EVALKIT_KERNELS=auto|ref|triton`` forces either (see ``evalkit.kernels.dispatch``)."""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import opaque, use_kernel
from evalkit.kernels.conv1d.ref import ACTIVATIONS, causal_conv1d_ref, conv_tail

__all__ = ["causal_conv1d", "causal_conv1d_ref", "conv_tail"]


@opaque
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  initial_state: torch.Tensor | None = None, activation: str | None = "silu",
                  return_final_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The semantics of :func:`causal_conv1d_ref` (see there for shapes). The kernel computes in float32 with
    float32 weights and writes y in x's dtype and layout (a (B, L, C) tensor's transpose gets a transposed
    result); the final conv state is the same PyTorch slice on either path."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {ACTIVATIONS}")
    W = weight.shape[-1]
    if x.dim() == 3 and 1 <= W <= 4 and use_kernel(x):  # the kernels take widths 1-4 (d_conv is 4)
        from evalkit.kernels.conv1d import triton as _triton  # lazy: triton is heavy to import

        y = _triton.causal_conv1d(x, weight, bias, initial_state, activation == "silu")
        if not return_final_state:
            return y
        xs = x if initial_state is None else torch.cat([initial_state.to(x.dtype), x], dim=2)
        return y, conv_tail(xs, W)
    return causal_conv1d_ref(x, weight, bias, initial_state, activation, return_final_state)
