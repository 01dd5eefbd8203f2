"""Which implementation an op runs: the Triton kernel or the PyTorch reference.

``EVALKIT_KERNELS`` (environment variable) picks, read at every call:

- ``auto`` (default): the Triton kernel for CUDA tensors in float16 / bfloat16 / float32, the
  reference otherwise (CPU, float64, or triton not importable);
- ``ref``: always the reference;
- ``triton``: the kernel wherever the dtype allows (also CPU tensors, which needs
  ``TRITON_INTERPRET=1``); float64 still runs the reference (the kernels compute in float32).

Each call is counted by path, so a caller (the cost probe) can say which path ran.

``opaque`` marks the ops' entry points for ``torch.compile``: once ``prepare_compile()`` has run, a
compiled caller does not trace into an op (its dispatch, its Triton launches or its reference's
loops) but breaks its graph there and runs the op as plain Python, so compiling a model fuses the
PyTorch code around the scans and leaves the scans as they are, kernels or references alike.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

ENV_VAR = "EVALKIT_KERNELS"
MODES = ("auto", "ref", "triton")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_calls = {"kernel": 0, "reference": 0}
_variants: dict[str, int] = {}  # "op:variant" → launches, for kernels that pick among variants


def mode() -> str:
    """The current mode from ``EVALKIT_KERNELS`` (``auto`` when unset)."""
    m = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"{ENV_VAR}={m!r} is not one of {', '.join(MODES)}")
    return m


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001  (any import failure means: no kernel path)
        return False
    return True


def use_kernel(x: torch.Tensor, state: torch.Tensor | None = None) -> bool:
    """Whether an op whose main input is ``x`` should run its Triton kernel; counts the call.

    ``state``: a decode step's recurrent state; the step kernels keep it in float32 only."""
    m = mode()
    kernel = (m != "ref" and x.dtype in KERNEL_DTYPES and triton_available()
              and (m == "triton" or x.is_cuda) and (state is None or state.dtype == torch.float32))
    _calls["kernel" if kernel else "reference"] += 1
    return kernel


def kernel_calls() -> int:
    """How many op calls have run a Triton kernel so far in this process."""
    return _calls["kernel"]


def note_variant(op: str, variant: str) -> None:
    """Record that ``op``'s kernel ran as ``variant`` (e.g. selective_scan:time2), so that the
    cost probe can store which kernel a measurement timed."""
    key = f"{op}:{variant}"
    _variants[key] = _variants.get(key, 0) + 1


def variant_calls() -> dict[str, int]:
    """Launches per "op:variant" so far in this process (a copy)."""
    return dict(_variants)


def needs_int64(*tensors: torch.Tensor | None) -> bool:
    """Whether an element offset into any of ``tensors`` can reach 2**31: 32-bit index arithmetic
    in a kernel would then wrap (d_inner 4096 × 1M steps is 2**32 elements). The kernels then compile
    a variant with 64-bit indices (a ``BIG`` compile-time flag); below it 32-bit arithmetic is cheaper."""
    return any(t is not None and sum((n - 1) * st for n, st in zip(t.shape, t.stride())) >= 2**31 - 1
               for t in tensors)


_run_plain: list[Callable[..., Any] | None] = [None]  # torch.compiler.disable'd runner, once prepared


def _plain(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def opaque(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as an op that ``torch.compile`` does not trace (see the module docstring). Outside a
    compiled region the wrapper is one flag test; Dynamo (a 1.4 s import) is only loaded by
    ``prepare_compile``."""

    @functools.wraps(fn)
    def op(*args: Any, **kwargs: Any) -> Any:
        if _run_plain[0] is not None and torch.compiler.is_compiling():
            return _run_plain[0](fn, args, kwargs)  # a graph break: Dynamo runs it as Python
        return fn(*args, **kwargs)

    return op


def prepare_compile() -> None:
    """Make every ``opaque`` op a graph break for ``torch.compile`` (call before compiling)."""
    if _run_plain[0] is None:
        _run_plain[0] = torch.compiler.disable(_plain)
