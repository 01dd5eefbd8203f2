"""What an executor is: the plain data that travels between the driver and the workers.

The driver (``runner.execute``) plans the work as :class:`WorkUnit` s, one per model variant
(model identity + name: everything that decides how the model is loaded), since loading a model
dominates. A worker evaluates a unit with ``runner.run_unit`` and streams :data:`Event` s back;
the driver, the only writer of the store, writes each finished cell as it arrives. So a crash of
a worker or of the driver loses at most the cells in flight, and a re-run resumes.

Executors differ only in *where* ``run_unit`` runs: in the driver's process (``local``) or in
Ray actors (``ray``). Everything here is picklable and imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalkit.runner import Cell
    from evalkit.spec import ModelSpec
    from evalkit.store import Record


@dataclass(frozen=True)
class WorkUnit:
    """All pending cells of one model variant, and the cost lengths to probe for it."""

    key: str  # model identity + name: the scheduling unit
    model: ModelSpec
    model_id: str
    cells: tuple[Cell, ...]  # pending cells (may be empty: cost probe only)
    device: str  # as asked for ("auto" | "cpu" | "cuda"); the worker resolves it
    run_id: str
    cost_lengths: tuple[int, ...] = ()  # lengths the cost probe covers (empty: no probe)
    cost_done: tuple[tuple[str, int], ...] = ()  # (device_name, length) with a finished cost row

    @property
    def n_samples(self) -> int:
        return sum(c.n_samples for c in self.cells)


@dataclass(frozen=True)
class UnitStarted:
    """A worker began a unit: where it runs (for logs, and for tests that kill it)."""

    unit: str
    pid: int
    host: str
    device: str


@dataclass(frozen=True)
class Progress:
    """``samples`` more samples are done (sent after every batch)."""

    unit: str
    samples: int


@dataclass(frozen=True)
class CellResult:
    """One finished cell: its ``cells`` row (status complete or failed) and its records."""

    unit: str
    cell_key: str
    row: dict[str, Any]
    records: tuple[Record, ...] = ()


@dataclass(frozen=True)
class CostResult:
    """Cost rows the probe measured for the unit's model (``costs`` columns)."""

    unit: str
    rows: tuple[dict[str, Any], ...]
    seconds: float


Event = UnitStarted | Progress | CellResult | CostResult
Handler = Callable[[Event], None]


@dataclass
class ExecutorStats:
    """What an executor did besides evaluating: worker restarts and the units given up on."""

    restarts: dict[str, int] = field(default_factory=dict)  # unit key → workers lost and replaced
    abandoned: dict[str, str] = field(default_factory=dict)  # unit key → why its cells were failed


class Executor:
    """Runs work units somewhere and hands every event to ``handle`` in the driver's thread."""

    name = "executor"

    def __init__(self) -> None:
        self.stats = ExecutorStats()

    def run(self, units: Sequence[WorkUnit], handle: Handler) -> None:
        raise NotImplementedError

    def describe(self, device: str) -> dict[str, Any]:
        """``device`` and ``device_name`` for the run's row in the store."""
        raise NotImplementedError
