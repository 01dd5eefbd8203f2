"""The ``ray`` executor: work units on Ray actors, results streamed back to the driver.

Each worker is a Ray actor holding ``gpus_per_worker`` GPUs (and ``cpus_per_worker`` CPUs). It
evaluates one unit at a time — every pending cell of one model, then that model's cost probe —
with ``runner.run_unit``, a generator whose events Ray streams to the driver as they are produced
(an actor method that yields: Ray's streaming generator). The driver multiplexes the streams with
``ray.wait`` and hands each event to the runner's writer, so finished cells reach SQLite while the
worker goes on.

A worker that dies (SIGKILL, OOM kill, node lost) surfaces on its stream as ``RayActorError``
(or Ray's ``OutOfMemoryError`` / ``WorkerCrashedError`` / ``NodeDiedError``).
The unit is then given to a fresh actor, which skips the cells already delivered; after
``max_retries`` such losses the unit's remaining cells are recorded ``failed`` with the reason and
the sweep finishes the rest. Everything else (a bug, a bad checkpoint) is raised, as locally.

``ray`` is imported only here, and only when this executor runs.
"""

from __future__ import annotations

import importlib
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.executors.base import CellResult, Executor, Handler, UnitStarted, WorkUnit

MAX_RETRIES = 2  # fresh workers a unit may use after the one it started on died


class _Worker:
    """The actor's body (made a Ray actor class by :func:`_actor_class`). Imports the plugin
    modules the driver used, so adapters and tasks registered outside evalkit resolve here too."""

    def __init__(self, plugin_modules: Sequence[tuple[str, str | None]]) -> None:
        for module, root in plugin_modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError:
                if root is None or not Path(root).is_dir():
                    raise
                sys.path.insert(0, root)  # a module the driver imported from a path (a local cluster)
                importlib.import_module(module)

    def run(self, unit: WorkUnit, skip: frozenset[str]) -> Any:
        from evalkit.runner import run_unit

        yield from run_unit(unit, skip)


def _actor_class() -> Any:
    import ray

    return ray.remote(max_restarts=0, max_task_retries=0)(_Worker)


def plugin_modules(units: Sequence[WorkUnit]) -> list[tuple[str, str | None]]:
    """Modules outside evalkit that define the adapters and tasks of ``units`` (the workers must
    import them to find those plugins), each with the sys.path root it was imported from."""
    from evalkit.models import ADAPTERS
    from evalkit.tasks import TASKS

    objs = [ADAPTERS.get(u.model.kind) for u in units]
    objs += [TASKS.get(c.spec.task) for u in units for c in u.cells]
    out: dict[str, str | None] = {}
    for obj in objs:
        name = obj.__module__
        if name.split(".")[0] == "evalkit" or name in out:
            continue
        if name == "__main__":
            raise EvalkitError(f"plugin {obj.__name__} is defined in __main__, which Ray workers cannot import; "
                               "move it into a module (or install it as an evalkit.plugins entry point)")
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        root = None
        if file:
            root = str(Path(file).resolve().parents[name.count(".")])
        out[name] = root
    return sorted(out.items())


class RayExecutor(Executor):
    """Run units on Ray actors.

    ``address``: a running cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``); None starts a
    local one for this run (or uses the one this process already initialised). ``workers``:
    actors running at once (default: as many as the cluster's GPUs — or CPUs, without GPUs —
    allow, at most one per unit). ``gpus_per_worker``: GPUs each actor holds (fractions share a
    GPU). ``max_retries``: fresh actors a unit may use after losing one.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, max_retries: int = MAX_RETRIES) -> None:
        super().__init__()
        if workers is not None and workers < 1:
            raise EvalkitError(f"--workers must be at least 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker < 0:
            raise EvalkitError("--gpus-per-worker and CPUs per worker cannot be negative")
        if max_retries < 0:
            raise EvalkitError(f"max_retries cannot be negative, got {max_retries}")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker, self.max_retries = gpus_per_worker, cpus_per_worker, max_retries
        self.worker_pids: dict[str, int] = {}  # unit key → pid of the actor now running it

    def describe(self, device: str) -> dict[str, Any]:
        if device == "cuda" and not self.gpus_per_worker:
            raise EvalkitError("--device cuda with --executor ray needs --gpus-per-worker (e.g. 1): Ray gives "
                               "an actor no GPU unless it asks for one")
        gpus = f", {self.gpus_per_worker:g} GPU each" if self.gpus_per_worker else ""
        return {"device": device, "device_name": f"ray ({self.address or 'local cluster'}{gpus})"}

    # ------------------------------------------------------------------ cluster
    def _connect(self) -> bool:
        """Connect (or start a local cluster); True when this call started the connection."""
        try:
            import ray
        except ImportError:
            raise EvalkitError("--executor ray needs Ray: pip install 'evalkit[ray]'") from None
        if ray.is_initialized():
            return False
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except ConnectionError as e:
            raise EvalkitError(f"cannot reach the Ray cluster at --ray-address {self.address}: {e}") from None
        return True

    def _capacity(self, n_units: int) -> int:
        import ray

        if self.workers is not None:
            return max(1, min(self.workers, n_units))
        res = ray.cluster_resources()
        if self.gpus_per_worker:
            fit = int(res.get("GPU", 0) / self.gpus_per_worker)
        else:
            fit = int(res.get("CPU", 1) / self.cpus_per_worker) if self.cpus_per_worker else n_units
        if fit < 1:
            raise EvalkitError(f"the Ray cluster has {res.get('GPU', 0):g} GPUs and {res.get('CPU', 0):g} CPUs: "
                               f"not enough for one worker ({self.gpus_per_worker:g} GPU, "
                               f"{self.cpus_per_worker:g} CPU)")
        return max(1, min(fit, n_units))

    # ------------------------------------------------------------------ the loop
    def run(self, units: Sequence[WorkUnit], handle: Handler) -> None:
        if not units:
            return
        started = self._connect()
        import ray
        from ray import exceptions as rx
        from ray.exceptions import RayTaskError

        # the worker process is gone (killed, OOM-killed by Ray's memory monitor, its node lost)
        worker_lost = (rx.RayActorError, rx.OutOfMemoryError, rx.WorkerCrashedError, rx.NodeDiedError)

        from evalkit.runner import failed_row

        cls = _actor_class().options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)
        plugins = plugin_modules(units)
        queue = deque(units)
        delivered: dict[str, set[str]] = {u.key: set() for u in units}
        lost: dict[str, int] = {u.key: 0 for u in units}
        idle: list[Any] = []
        streams: dict[Any, tuple[Any, WorkUnit]] = {}
        size = self._capacity(len(units))
        try:
            while queue or streams:
                while queue and len(streams) < size:
                    unit = queue.popleft()
                    actor = idle.pop() if idle else cls.remote(plugins)
                    streams[actor.run.remote(unit, frozenset(delivered[unit.key]))] = (actor, unit)
                (stream,), _ = ray.wait(list(streams), num_returns=1)
                actor, unit = streams[stream]
                try:
                    event = ray.get(next(stream))
                except StopIteration:
                    del streams[stream]
                    idle.append(actor)
                    continue
                except worker_lost as e:  # retry on a fresh worker, or give up on the unit
                    del streams[stream]
                    ray.kill(actor, no_restart=True)
                    lost[unit.key] += 1
                    self.stats.restarts[unit.key] = lost[unit.key]
                    if lost[unit.key] <= self.max_retries:
                        queue.appendleft(unit)
                        continue
                    reason = (f"worker died {lost[unit.key]} times (max_retries={self.max_retries}); last: "
                              f"{type(e).__name__}: {_first_line(e)}")
                    self.stats.abandoned[unit.key] = reason
                    for c in unit.cells:
                        if c.cell_key not in delivered[unit.key]:
                            handle(CellResult(unit.key, c.cell_key, failed_row(c, unit.run_id, reason, unit.device)))
                    continue
                except RayTaskError as e:  # raised inside run_unit: bad input or a bug, as locally
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, EvalkitError):
                        raise cause from None
                    raise
                if isinstance(event, UnitStarted):
                    self.worker_pids[unit.key] = event.pid
                elif isinstance(event, CellResult):
                    delivered[unit.key].add(event.cell_key)
                handle(event)
        finally:
            for actor, _ in streams.values():
                ray.kill(actor, no_restart=True)
            for actor in idle:
                ray.kill(actor, no_restart=True)
            if started:
                ray.shutdown()


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else ""
