"""Plan cells from specs × models × axes, evaluate them, store them; resume what is done.

    plan(task specs, model specs)  → [Cell]          (pure; no model is loaded)
    execute(cells, output_dir)      → RunResult       (loads each model once, batches by length,
                                                       writes each cell atomically)

The cell key is defined here, once, for every later capability:

    sample_key = H(generator version, task name + version, resolved params, format, render options,
                   tokenizer identity, context length, seed)
    cell_key   = H(sample_key, model identity (config + weights hash), samples, scoring mode)

Samples are a pure function of (sample_key, index), so every model sees the same samples.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import ContextLengthError, EvalkitError, SpecError
from evalkit.models.base import ADAPTERS, Adapter, stable_hash
from evalkit.spec import ModelSpec, TaskSpec
from evalkit.stats import bootstrap, wilson
from evalkit.store import Record, Store, writer_lock
from evalkit.tasks import FORMATS, TASKS
from evalkit.tasks.base import Rendered, Sample, Task

GENERATOR_VERSION = 1  # bump when sample generation or rendering shared by all tasks changes
TOKENS_PER_BATCH = 1 << 16


@dataclass(frozen=True)
class Cell:
    """One point of the sweep."""

    spec: TaskSpec
    model: ModelSpec
    model_id: str
    params: tuple[tuple[str, Any], ...]  # the task's resolved Params
    axes: tuple[tuple[str, Any], ...]  # swept axes of this cell (a subset of params)
    context_length: int
    format: str
    seed: int
    n_samples: int
    scoring: str
    sample_key: str
    cell_key: str

    @property
    def label(self) -> str:
        axes = " ".join(f"{k}={v}" for k, v in self.axes)
        return f"{self.spec.name}/{self.model.name} L={self.context_length}{' ' + axes if axes else ''}"


def _sample_key(spec: TaskSpec, params: dict[str, Any], fmt: str, length: int, seed: int) -> str:
    task = TASKS.get(spec.task)
    return stable_hash({
        "generator": GENERATOR_VERSION, "task": spec.task, "task_version": task.version,
        "params": params, "format": fmt, "render": {"filler": spec.filler}, "tokenizer": None,
        "context_length": length, "seed": seed,
    })[:24]


def plan(
    specs: Sequence[TaskSpec],
    models: Sequence[ModelSpec],
    lengths: Sequence[int] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    scoring: str = "teacher_forced",
) -> list[Cell]:
    """Every cell of specs × models × lengths × axis values; validates lengths and formats first."""
    cells: list[Cell] = []
    for model in models:
        adapter = ADAPTERS.get(model.kind)
        adapter.check(model)
        model_id = adapter.identity(model)
        limit = adapter.max_context(model)
        for spec in specs:
            fmt = spec.format or adapter.formats[0]
            if fmt not in adapter.formats:
                raise SpecError(f"{spec.path}: format '{fmt}' is not accepted by model '{model.name}' "
                                f"(adapter '{model.kind}' takes: {', '.join(adapter.formats)})")
            for length in lengths or spec.lengths:
                if limit is not None and length > limit:
                    raise ContextLengthError(
                        f"model '{model.name}' accepts at most {limit} tokens, but {spec.path} asks for context length {length}")
                s = spec.seed if seed is None else seed
                n = spec.samples if samples is None else samples
                for point in spec.points():
                    skey = _sample_key(spec, point, fmt, length, s)
                    ckey = stable_hash({"sample_key": skey, "model": model_id, "samples": n, "scoring": scoring})[:24]
                    axes = tuple((a, point[a]) for a, _ in spec.sweep)
                    cells.append(Cell(spec, model, model_id, tuple(sorted(point.items())), axes, length,
                                      fmt, s, n, scoring, skey, ckey))
    _check_lengths_fit(cells)
    return cells


def _check_lengths_fit(cells: Sequence[Cell]) -> None:
    """Render sample 0 of each distinct sample key: a length too short for the task fails here,
    before any model runs."""
    seen: set[str] = set()
    for c in cells:
        if c.sample_key in seen:
            continue
        seen.add(c.sample_key)
        try:
            render(c, make_sample(c, 0))
        except ValueError as e:
            raise ContextLengthError(f"{c.spec.path}: {c.label}: {e}") from None


def make_sample(cell: Cell, index: int) -> Sample:
    """Sample ``index`` of a cell: a pure function of the sample key and the index."""
    task: Task = TASKS.get(cell.spec.task)(TASKS.get(cell.spec.task).Params(**dict(cell.params)))
    seed = int.from_bytes(hashlib.sha256(f"{cell.sample_key}:{index}".encode()).digest()[:8], "little")
    return task.sample(cell.context_length, np.random.default_rng(seed), index)


def render(cell: Cell, sample: Sample) -> Rendered:
    r = FORMATS.get(cell.format)(sample, cell.context_length, filler=cell.spec.filler)
    assert r.context_length == cell.context_length
    return r


def decode(fmt: str, ids: Sequence[int]) -> str:
    from evalkit.tasks.tokens import decode_tokens

    return decode_tokens(list(ids))


# --------------------------------------------------------------------------- execution
@dataclass
class RunResult:
    run_id: str
    output_dir: Path
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell label → reason
    skipped: int = 0  # over --limit, left for the next run
    random_models: list[str] = field(default_factory=list)
    cost_points: int = 0  # cost rows measured by this run's probe (evalkit/cost.py)
    cost_s: float = 0.0  # seconds the cost probe added to the run


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EvalkitError("--device cuda was asked for, but no CUDA device is available")
    return device


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def execute(
    cells: Sequence[Cell],
    output_dir: str | Path = "runs",
    device: str = "auto",
    overwrite: bool = False,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_cell: Callable[[Cell, str], None] | None = None,
    command: str | None = None,
    cost: bool = True,
) -> RunResult:
    """Evaluate the cells not already complete in the store; write each one atomically.

    ``progress(n)`` is called after every batch with the number of samples done; ``on_cell(cell,
    status)`` after every cell. A failing cell is recorded as failed and the run goes on.
    With ``cost`` (the default), after each model's cells the cost probe measures every distinct
    context length of that model's cells that has no cost row on this device yet (batch 1).
    """
    import torch

    from evalkit import __version__

    device = resolve_device(device)
    out = Path(output_dir)
    with writer_lock(out):
        store = Store.open_dir(out, create=True)
        try:
            run_id = f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            result = RunResult(run_id, out, list(cells))
            done = set() if overwrite else store.complete_keys([c.cell_key for c in cells])
            todo = [c for c in cells if c.cell_key not in done]
            result.reused = [c.cell_key for c in cells if c.cell_key in done]
            if limit is not None:
                result.skipped = max(0, len(todo) - limit)
                todo = todo[:limit]
            store.start_run({
                "run_id": run_id, "started_at": _now(), "status": "running", "command": command,
                "git_commit": _git_commit(), "evalkit_version": __version__, "torch_version": torch.__version__,
                "python_version": platform.python_version(), "device": device,
                "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
                "seed": cells[0].seed if cells else None,
                "specs": {"tasks": {c.spec.name: c.spec.to_dict() for c in cells},
                          "models": {c.model.name: c.model.to_dict() for c in cells}},
            })
            status = "error"
            try:
                probe = _cost_hook(store, cells, device, result) if cost else None
                _execute_cells(store, todo, device, result, progress, on_cell, probe)
                if probe is not None:
                    probe(None, None)  # models with no pending cells: probe what is missing
                status = "complete" if not result.failed else "failed"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                store.finish_run(run_id, status, _now())
            result.random_models = sorted({c.model.name for c in cells if ADAPTERS.get(c.model.kind).random_weights(c.model)})
            return result
        finally:
            store.close()


def _cost_hook(store: Store, cells: Sequence[Cell], device: str, result: RunResult
               ) -> Callable[[Adapter | None, str | None], None]:
    """``probe(adapter, model_key)`` runs the cost probe for one model's lengths (reusing the
    loaded adapter); ``probe(None, None)`` then covers every model not probed yet, loading it
    only if some length is missing. Failures become ``error`` cost rows, never lost cells."""
    from evalkit import cost as _cost

    by_model: dict[str, list[Cell]] = {}
    for c in cells:
        by_model.setdefault(c.model_id + c.model.name, []).append(c)
    probed: set[str] = set()

    def probe_one(adapter: Adapter | None, key: str) -> None:
        probed.add(key)
        group = by_model[key]
        spec = group[0].model
        t0 = time.perf_counter()
        rows = _cost.probe_into_store(
            store, lambda: ADAPTERS.get(spec.kind)(spec, device), group[0].model_id, spec.name,
            sorted({c.context_length for c in group}), device, run_id=result.run_id, adapter=adapter)
        if rows:
            result.cost_points += len(rows)
            result.cost_s += time.perf_counter() - t0

    def probe(adapter: Adapter | None, key: str | None) -> None:
        if key is not None:
            probe_one(adapter, key)
            return
        for k in by_model:
            if k not in probed:
                probe_one(None, k)

    return probe


def _execute_cells(store: Store, todo: Sequence[Cell], device: str, result: RunResult,
                   progress: Callable[[int], None] | None, on_cell: Callable[[Cell, str], None] | None,
                   probe: Callable[[Adapter | None, str | None], None] | None = None) -> None:
    by_model: dict[str, list[Cell]] = {}
    for c in todo:
        by_model.setdefault(c.model_id + c.model.name, []).append(c)
    for group in by_model.values():
        try:
            adapter = ADAPTERS.get(group[0].model.kind)(group[0].model, device)
        except EvalkitError:
            raise
        except Exception as e:  # a model that cannot load fails its cells, the rest go on
            for c in group:
                _fail(store, c, result, f"model failed to load: {type(e).__name__}: {e}", device, on_cell)
                if progress:
                    progress(c.n_samples)
            continue
        info = adapter.describe()
        for c in sorted(group, key=lambda c: (c.context_length, c.spec.name, c.axes)):
            try:
                _run_cell(store, adapter, info, c, device, result, progress)
                if on_cell:
                    on_cell(c, "complete")
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                if "out of memory" in str(e).lower() and device == "cuda":
                    import torch

                    torch.cuda.empty_cache()
                _fail(store, c, result, f"{type(e).__name__}: {e}", device, on_cell)
        if probe is not None:
            probe(adapter, group[0].model_id + group[0].model.name)


def _fail(store: Store, c: Cell, result: RunResult, reason: str, device: str,
          on_cell: Callable[[Cell, str], None] | None) -> None:
    result.failed[c.label] = reason
    store.write_cell(_cell_row(c, result.run_id, "failed", device, error=reason), [])
    if on_cell:
        on_cell(c, "failed")


def _cell_row(c: Cell, run_id: str, status: str, device: str, **kw: Any) -> dict[str, Any]:
    return {
        "cell_key": c.cell_key, "sample_key": c.sample_key, "run_id": run_id, "status": status,
        "spec": c.spec.name, "task": c.spec.task, "model": c.model.name, "model_id": c.model_id,
        "model_kind": c.model.kind, "random_weights": int(ADAPTERS.get(c.model.kind).random_weights(c.model)),
        "format": c.format, "context_length": c.context_length, "axes": dict(c.axes), "params": dict(c.params),
        "seed": c.seed, "n_samples": c.n_samples, "scoring": c.scoring, "device": device,
        "finished_at": _now(), **kw,
    }


def _run_cell(store: Store, adapter: Adapter, info: dict[str, Any], c: Cell, device: str,
              result: RunResult, progress: Callable[[int], None] | None) -> None:
    from evalkit.scoring import predict_greedy, predict_teacher_forced, score

    t0 = time.perf_counter()
    task_cls = TASKS.get(c.spec.task)
    rendered = [render(c, make_sample(c, i)) for i in range(c.n_samples)]
    predict = predict_teacher_forced if c.scoring == "teacher_forced" else predict_greedy
    bs = max(1, min(len(rendered), TOKENS_PER_BATCH // c.context_length))
    records: list[Record] = []
    for start in range(0, len(rendered), bs):
        batch = rendered[start : start + bs]
        for i, (r, p) in enumerate(zip(batch, predict(adapter, batch)), start=start):
            correct, scores = score(r, p, task_cls.secondary)
            records.append(Record(
                idx=i, prompt_hash=_h(r.input_ids[: r.prompt_len]), target_hash=_h(sum(_expected(r), ())),
                prompt=decode(c.format, r.input_ids[: r.prompt_len]),
                prediction=" | ".join(decode(c.format, a) for a in p.answers),
                answer=" | ".join(decode(c.format, a) for a in _expected(r)), correct=correct, scores=scores,
            ))
        if progress:
            progress(len(batch))
    wall = time.perf_counter() - t0
    n_ok = sum(r.correct for r in records)
    lo, hi = wilson(n_ok, len(records))
    metrics = {}
    for name in task_cls.secondary:
        vals = [r.scores[name] for r in records]
        blo, bhi = bootstrap(vals, seed=c.seed)
        metrics[name] = {"mean": float(np.mean(vals)), "ci_low": blo, "ci_high": bhi, "teacher_forced": True}
    row = _cell_row(c, result.run_id, "complete", device, n_correct=n_ok, accuracy=n_ok / len(records),
                    ci_low=lo, ci_high=hi, metrics=metrics, model_info=info, wall_s=wall,
                    tokens_per_s=len(records) * c.context_length / wall if wall > 0 else None)
    store.write_cell(row, records)
    result.ran.append(c.cell_key)


def _expected(r: Rendered) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(r.input_ids[s:e]) for s, e in r.answer_spans)


def _h(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def estimate_seconds(cells: Sequence[Cell], store: Store | None) -> float:
    """Rough time for ``cells``: tokens / throughput seen for the same model in the store, else
    a default guess for a small native model on CPU."""
    default = 60_000.0
    seen: dict[str, float] = {}
    if store is not None:
        for row in store.cells("WHERE status='complete' AND tokens_per_s IS NOT NULL"):
            seen[row["model_id"]] = row["tokens_per_s"]
    return sum(c.n_samples * c.context_length / seen.get(c.model_id, default) for c in cells)
