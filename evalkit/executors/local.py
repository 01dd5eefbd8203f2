"""The ``local`` executor: every unit in the driver's own process, one after another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalkit.executors.base import Executor, Handler, WorkUnit


class LocalExecutor(Executor):
    """Evaluates units in order in this process; events reach ``handle`` as they happen (per
    batch), so progress and the store advance exactly as they did before executors existed."""

    name = "local"

    def run(self, units: Sequence[WorkUnit], handle: Handler) -> None:
        from evalkit.runner import run_unit

        for unit in units:
            for event in run_unit(unit):
                handle(event)

    def describe(self, device: str) -> dict[str, Any]:
        import platform

        from evalkit.runner import resolve_device

        resolved = resolve_device(device)
        if resolved == "cuda":
            import torch

            return {"device": resolved, "device_name": torch.cuda.get_device_name()}
        return {"device": resolved, "device_name": platform.processor() or platform.machine()}
