"""Where a sweep's work runs: ``local`` (this process) or ``ray`` (actors on a Ray cluster).

The driver schedules one :class:`WorkUnit` per model variant and stays the store's only writer;
see ``base.py`` for the protocol and docs/distributed.md for running on a cluster. Ray is an
optional extra, imported only when the ``ray`` executor is used.
"""

from __future__ import annotations

from typing import Any

from evalkit.errors import EvalkitError
from evalkit.executors.base import (
    CellResult,
    CostResult,
    Event,
    Executor,
    ExecutorStats,
    Progress,
    UnitStarted,
    WorkUnit,
)

EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", **options: Any) -> Executor:
    """An executor by name. ``local`` takes no options; ``ray`` takes ``address``, ``workers``,
    ``gpus_per_worker``, ``cpus_per_worker``, ``max_retries`` (see ``RayExecutor``)."""
    if name == "local":
        if any(v is not None for v in options.values()):
            given = ", ".join(k for k, v in options.items() if v is not None)
            raise EvalkitError(f"executor 'local' runs in this process and takes no {given} (use --executor ray)")
        from evalkit.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from evalkit.executors.ray_executor import RayExecutor

        return RayExecutor(**{k: v for k, v in options.items() if v is not None})
    from evalkit.registry import did_you_mean

    raise EvalkitError(f"unknown executor '{name}'{did_you_mean(name, EXECUTORS)}")


__all__ = ["EXECUTORS", "CellResult", "CostResult", "Event", "Executor", "ExecutorStats", "Progress",
           "UnitStarted", "WorkUnit", "make_executor"]
