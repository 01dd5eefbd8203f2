"""Gated delta rule (Gated DeltaNet): the chunked reference, a per-step loop and one decode step.

There is no Triton kernel yet, so ``gated_delta_rule`` is the PyTorch reference on every device.
"""

from __future__ import annotations

from evalkit.kernels.gated_delta.ref import (
    gated_delta_naive,
    gated_delta_ref,
    gated_delta_step,
)

gated_delta_rule = gated_delta_ref

__all__ = ["gated_delta_naive", "gated_delta_ref", "gated_delta_rule", "gated_delta_step"]
