"""Plan cells from specs × models × axes, evaluate them, store them; resume what is done.

    plan(task specs, model specs)  → [Cell]          (pure; no model is loaded)
    execute(cells, output_dir)      → RunResult       (one WorkUnit per model variant, run by an
                                                       executor — local or Ray — through run_unit;
                                                       this process writes each cell atomically)
    run_unit(unit)                  → events          (loads the model once, evaluates its cells
                                                       batched by length, then its cost probe)

The cell key is defined here, once, for every later capability:

    sample_key = H(generator version, task name + version, resolved params, format, render options,
                   tokenizer identity, context length, seed)
                 (tokens: render options = {filler}, tokenizer = None — unchanged since schema 1;
                  plus answers / queries where a spec sets them off their defaults;
                  text: render options = resolved text options + filler + the model's render
                  options such as the chat template, tokenizer = hash of the tokenizer files)
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evalkit.errors import ContextLengthError, EvalkitError, SpecError
from evalkit.executors.base import (
    CellResult,
    CostResult,
    Event,
    Executor,
    Progress,
    UnitStarted,
    WorkUnit,
)
from evalkit.models.base import ADAPTERS, Adapter, stable_hash
from evalkit.spec import ModelSpec, TaskSpec
from evalkit.stats import bootstrap, wilson
from evalkit.store import Record, Store, writer_lock
from evalkit.tasks import FORMATS, TASKS
from evalkit.tasks.base import OverLengthError, Rendered, Sample, Task

if TYPE_CHECKING:
    from evalkit.scoring import Prediction

GENERATOR_VERSION = 1  # bump when sample generation or rendering shared by all tasks changes
TOKENS_PER_BATCH = 1 << 16  # first batch size of a cell: this many tokens (halved on CUDA OOM)
GREEDY_EXTRA_TOKENS = 8  # text generations run this far past the answer (substring scoring)


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
    render_opts: tuple[tuple[str, Any], ...] = ()  # format options (and over-length policy), sorted
    tokenizer: str | None = None  # tokenizer identity of text cells

    @property
    def overlength(self) -> str:
        return str(dict(self.render_opts).get("overlength", "error"))

    @property
    def label(self) -> str:
        axes = " ".join(f"{k}={v}" for k, v in self.axes)
        return f"{self.spec.name}/{self.model.name} L={self.context_length}{' ' + axes if axes else ''}"


def _sample_key(spec: TaskSpec, params: dict[str, Any], fmt: str, length: int, seed: int,
                render: dict[str, Any] | None = None, tokenizer: str | None = None) -> str:
    task = TASKS.get(spec.task)
    return stable_hash({
        "generator": GENERATOR_VERSION, "task": spec.task, "task_version": task.version,
        "params": params, "format": fmt, "render": render or {"filler": spec.filler}, "tokenizer": tokenizer,
        "context_length": length, "seed": seed,
    })[:24]


def _render_options(spec: TaskSpec, fmt: str, adapter: type[Adapter], model: ModelSpec) -> dict[str, Any]:
    """What, besides the sample, decides the rendering: the tokens format's filler (and its
    ``answers`` / ``queries`` options when not at their defaults, so older cell keys stand); the text
    format's resolved options, over-length policy and the model's options (chat template)."""
    if fmt != "text":
        return {"filler": spec.filler, **spec.token_options()}
    from evalkit.tasks.text import resolve_text_options

    return {"filler": spec.filler, **resolve_text_options(dict(spec.text), spec.filler),
            **adapter.render_options(model)}


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
            accepted = adapter.accepted_formats(model)
            fmt = spec.format or adapter.default_format(model)
            if fmt not in accepted:
                raise SpecError(f"{spec.path}: format '{fmt}' is not accepted by model '{model.name}' "
                                f"(adapter '{model.kind}' takes: {', '.join(accepted)})")
            if spec.token_options() and fmt != "tokens":
                opts = ", ".join(f"{k}: {v}" for k, v in spec.token_options().items())
                raise SpecError(f"{spec.path}: {opts} needs the tokens format, and model '{model.name}' reads '{fmt}'")
            if spec.answers == "hidden" and scoring != "teacher_forced":
                raise SpecError(f"{spec.path}: answers: hidden cannot be scored by {scoring} generation: no answer "
                                "is ever model input, so there is nothing to generate from (use teacher_forced)")
            tokenizer = adapter.tokenizer_identity(model) if fmt == "text" else None
            if fmt == "text" and tokenizer is None:
                raise SpecError(f"{spec.path}: format 'text' needs a tokenizer, and model '{model.name}' has none")
            render_opts = _render_options(spec, fmt, adapter, model)
            for length in lengths or spec.lengths:
                if limit is not None and length > limit:
                    raise ContextLengthError(
                        f"model '{model.name}' accepts at most {limit} tokens, but {spec.path} asks for context length {length}")
                s = spec.seed if seed is None else seed
                n = spec.samples if samples is None else samples
                for point in spec.points():
                    # tokens at the defaults: render options {filler}, as since schema 1
                    skey = _sample_key(spec, point, fmt, length, s, render_opts, tokenizer)
                    ckey = stable_hash({"sample_key": skey, "model": model_id, "samples": n, "scoring": scoring})[:24]
                    axes = tuple((a, point[a]) for a, _ in spec.sweep)
                    cells.append(Cell(spec, model, model_id, tuple(sorted(point.items())), axes, length,
                                      fmt, s, n, scoring, skey, ckey, tuple(sorted(render_opts.items())), tokenizer))
    _check_lengths_fit(cells)
    return cells


def _check_lengths_fit(cells: Sequence[Cell]) -> None:
    """Render sample 0 of each distinct sample key: a length too short for the task fails here,
    before any model runs (unless the spec's over-length policy is ``skip``: then too-long
    samples are counted as skipped at run time)."""
    seen: set[str] = set()
    for c in cells:
        if c.sample_key in seen:
            continue
        seen.add(c.sample_key)
        try:
            render(c, make_sample(c, 0))
        except OverLengthError as e:
            if c.overlength != "skip":
                raise ContextLengthError(f"{c.spec.path}: {c.label}: {e} (or set text: {{overlength: skip}} "
                                         "to count such samples as skipped)") from None
        except ValueError as e:
            raise ContextLengthError(f"{c.spec.path}: {c.label}: {e}") from None


def make_sample(cell: Cell, index: int) -> Sample:
    """Sample ``index`` of a cell: a pure function of the sample key and the index."""
    task: Task = TASKS.get(cell.spec.task)(TASKS.get(cell.spec.task).Params(**dict(cell.params)))
    seed = int.from_bytes(hashlib.sha256(f"{cell.sample_key}:{index}".encode()).digest()[:8], "little")
    return task.sample(cell.context_length, np.random.default_rng(seed), index)


def render(cell: Cell, sample: Sample) -> Rendered:
    """A sample of ``cell`` in its format: exactly ``context_length`` tokens for ``tokens``; for
    ``text`` at most that many (exact unless the tokenizer lacks short words; see text.py)."""
    opts = {k: v for k, v in cell.render_opts if k != "overlength"} or {"filler": cell.spec.filler}
    if cell.format == "text":
        opts["tokenizer"] = ADAPTERS.get(cell.model.kind).load_tokenizer(cell.model)
    r = FORMATS.get(cell.format)(sample, cell.context_length, **opts)
    exact = r.context_length == cell.context_length
    assert exact or (cell.format != "tokens" and r.context_length < cell.context_length)
    return r


def readable(cell: Cell) -> Callable[[Sequence[int]], str]:
    """ids → readable text for records: the tokenizer's decoding for text, token names for tokens."""
    if cell.format == "text":
        from evalkit.tasks.text import decoder

        return decoder(ADAPTERS.get(cell.model.kind).load_tokenizer(cell.model))
    from evalkit.tasks.tokens import decode_tokens

    return lambda ids: decode_tokens(list(ids))


def decode(fmt: str, ids: Sequence[int]) -> str:
    """Token names of a ``tokens`` rendering (kept for callers outside the runner)."""
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
    executor: Executor | str | None = None,
) -> RunResult:
    """Evaluate the cells not already complete in the store; write each one atomically.

    Work is scheduled per model variant (a :class:`~evalkit.executors.base.WorkUnit`: every
    pending cell of one model, plus its cost probe) through ``executor`` (``local``, the default,
    or ``ray``; an :class:`~evalkit.executors.base.Executor` or its name). Workers stream finished
    cells back and this process, the store's only writer, writes each as it arrives.

    ``progress(n)`` is called after every batch with the number of samples done; ``on_cell(cell,
    status)`` after every cell. A failing cell is recorded as failed and the run goes on.
    With ``cost`` (the default), after each model's cells the cost probe measures every distinct
    context length of that model's cells that has no cost row on the worker's device yet (batch 1).
    """
    import torch

    from evalkit import __version__
    from evalkit.executors import make_executor

    ex = make_executor(executor or "local") if executor is None or isinstance(executor, str) else executor
    where = ex.describe(device)
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
                "python_version": platform.python_version(), **where,
                "seed": cells[0].seed if cells else None,
                "specs": {"tasks": {c.spec.name: c.spec.to_dict() for c in cells},
                          "models": {c.model.name: c.model.to_dict() for c in cells}},
            })
            status = "error"
            try:
                units = work_units(store, cells, todo, device, run_id, cost)
                ex.run(units, _writer(store, {c.cell_key: c for c in todo}, result, progress, on_cell))
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


def _unit_key(c: Cell) -> str:
    return c.model_id + c.model.name


def work_units(store: Store, cells: Sequence[Cell], todo: Sequence[Cell], device: str, run_id: str,
               cost: bool) -> list[WorkUnit]:
    """One unit per model variant with pending cells (and, with ``cost``, per model whose cost
    rows may be missing: the worker checks on its own device and loads the model only then).
    The cost probe covers every distinct length of the model's cells in this sweep."""
    from evalkit.cost import DONE_STATUSES

    pending: dict[str, list[Cell]] = {}
    for c in todo:
        pending.setdefault(_unit_key(c), []).append(c)
    everything: dict[str, list[Cell]] = {}
    for c in cells:
        everything.setdefault(_unit_key(c), []).append(c)
    units = []
    for key, group in everything.items():
        mine = sorted(pending.get(key, []), key=lambda c: (c.context_length, c.spec.name, c.axes))
        if not mine and not cost:
            continue
        lengths: tuple[int, ...] = ()
        finished: tuple[tuple[str, int], ...] = ()
        if cost:
            lengths = tuple(sorted({c.context_length for c in group}))
            rows = store.costs(f"WHERE model_id=? AND batch=1 AND status IN ({','.join('?' * len(DONE_STATUSES))})",
                               (group[0].model_id, *DONE_STATUSES))
            finished = tuple(sorted({(r["device_name"], int(r["context_length"])) for r in rows}))
        units.append(WorkUnit(key, group[0].model, group[0].model_id, tuple(mine), device, run_id, lengths, finished))
    return units


def _writer(store: Store, todo: dict[str, Cell], result: RunResult, progress: Callable[[int], None] | None,
            on_cell: Callable[[Cell, str], None] | None) -> Callable[[Event], None]:
    """The driver's event handler: the one place results are written to the store. A cell that
    arrives twice (a worker that died after sending it, then retried) is written once."""
    written: set[str] = set()

    def handle(event: Event) -> None:
        if isinstance(event, Progress):
            if progress:
                progress(event.samples)
        elif isinstance(event, CellResult):
            if event.cell_key in written or event.cell_key not in todo:
                return
            store.write_cell(event.row, list(event.records))
            written.add(event.cell_key)
            c = todo[event.cell_key]
            if event.row["status"] == "complete":
                result.ran.append(c.cell_key)
            else:
                result.failed[c.label] = event.row["error"]
            if on_cell:
                on_cell(c, event.row["status"])
        elif isinstance(event, CostResult):
            for row in event.rows:
                store.write_cost(row)
            result.cost_points += len(event.rows)
            result.cost_s += event.seconds

    return handle


# --------------------------------------------------------------------------- the worker side
def run_unit(unit: WorkUnit, skip: frozenset[str] = frozenset()) -> Iterator[Event]:
    """Evaluate one unit wherever this runs (the driver, or a Ray actor); yield its events.

    Loads the model once, evaluates every cell not in ``skip`` (cells a previous attempt already
    delivered), then probes the cost lengths this device has no row for. A failing cell becomes a
    failed row and the unit goes on; a model that cannot load fails all its cells (an
    ``EvalkitError`` — bad input — is raised instead, as planning would have)."""
    import os
    import socket

    from evalkit import cost as _cost

    device = resolve_device(unit.device)
    yield UnitStarted(unit.key, os.getpid(), socket.gethostname(), device)
    cells = [c for c in unit.cells if c.cell_key not in skip]
    here = _cost.device_name(device) if unit.cost_lengths else ""
    missing = sorted({L for L in unit.cost_lengths} - {L for name, L in unit.cost_done if name == here})
    if not cells and not missing:
        return
    spec = unit.model
    try:
        adapter = ADAPTERS.get(spec.kind)(spec, device)
    except Exception as e:  # a model that cannot load fails its cells, the rest of the sweep goes on
        if isinstance(e, EvalkitError) and cells:
            raise
        reason = f"model failed to load: {type(e).__name__}: {e}"
        for c in cells:
            yield CellResult(unit.key, c.cell_key, failed_row(c, unit.run_id, reason, device))
            yield Progress(unit.key, c.n_samples)
        if missing:
            yield CostResult(unit.key, tuple(_cost.error_rows(unit.model_id, spec.name, device, missing,
                                                              f"cost probe failed: {reason}",
                                                              run_id=unit.run_id)), 0.0)
        return
    info = adapter.describe()
    for c in cells:
        try:
            yield from evaluate_cell(adapter, info, c, device, unit.run_id)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001  (a failing cell is a result; the unit goes on)
            if "out of memory" in str(e).lower() and device == "cuda":
                import torch

                torch.cuda.empty_cache()
            yield CellResult(unit.key, c.cell_key, failed_row(c, unit.run_id, f"{type(e).__name__}: {e}", device))
    if missing:
        t0 = time.perf_counter()
        try:
            rows = _cost.probe(adapter, missing, device, run_id=unit.run_id)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001  (the recall results are never put at risk by the probe)
            rows = _cost.error_rows(unit.model_id, spec.name, device, missing,
                                    f"cost probe failed: {type(e).__name__}: {e}", run_id=unit.run_id)
        yield CostResult(unit.key, tuple(rows), time.perf_counter() - t0)


def failed_row(c: Cell, run_id: str, reason: str, device: str) -> dict[str, Any]:
    """The ``cells`` row of a cell that failed (no records)."""
    return _cell_row(c, run_id, "failed", device, error=reason)


def _cell_row(c: Cell, run_id: str, status: str, device: str, **kw: Any) -> dict[str, Any]:
    return {
        "cell_key": c.cell_key, "sample_key": c.sample_key, "run_id": run_id, "status": status,
        "spec": c.spec.name, "task": c.spec.task, "model": c.model.name, "model_id": c.model_id,
        "model_kind": c.model.kind, "random_weights": int(ADAPTERS.get(c.model.kind).random_weights(c.model)),
        "format": c.format, "context_length": c.context_length, "axes": dict(c.axes), "params": dict(c.params),
        "seed": c.seed, "n_samples": c.n_samples, "scoring": c.scoring, "device": device,
        "finished_at": _now(), **kw,
    }


def evaluate_cell(adapter: Adapter, info: dict[str, Any], c: Cell, device: str, run_id: str
                  ) -> Iterator[Progress | CellResult]:
    """Render, predict (batched, halving on OOM) and score one cell's samples: yields a
    :class:`Progress` after every batch, then the cell's :class:`CellResult` (nothing is written
    here; the driver writes it)."""
    from evalkit.scoring import predict_greedy, predict_teacher_forced, score

    unit = _unit_key(c)
    t0 = time.perf_counter()
    task_cls = TASKS.get(c.spec.task)
    rendered: list[tuple[int, Rendered]] = []
    for i in range(c.n_samples):
        try:
            rendered.append((i, render(c, make_sample(c, i))))
        except OverLengthError:
            if c.overlength != "skip":
                raise
    skipped = c.n_samples - len(rendered)
    if not rendered:
        raise OverLengthError(f"all {c.n_samples} samples are longer than {c.context_length} tokens "
                              "without any haystack (text: {overlength: skip})")
    if skipped:
        yield Progress(unit, skipped)
    text = readable(c)
    if c.scoring == "teacher_forced":
        predict = predict_teacher_forced
    else:
        limit = type(adapter).max_context(adapter.spec)
        want = getattr(task_cls, "greedy_extra_tokens", GREEDY_EXTRA_TOKENS)  # a task may ask for more (RULER: 128)
        extra = want if limit is None else max(0, min(want, limit - c.context_length))
        detok = text if c.format == "text" else None

        def predict(a: Adapter, b: Sequence[Rendered]) -> list[Prediction]:
            return predict_greedy(a, b, detok, extra)
    sizing = {"bs": max(1, min(len(rendered), TOKENS_PER_BATCH // c.context_length))}
    records: list[Record] = []
    start = 0
    while start < len(rendered):
        batch = rendered[start : start + sizing["bs"]]
        preds = predict_with_backoff(predict, adapter, [r for _, r in batch], sizing)
        for (i, r), p in zip(batch, preds):
            correct, scores = score(r, p, task_cls.secondary)
            records.append(Record(
                idx=i, prompt_hash=_h(r.input_ids[: r.prompt_len]), target_hash=_h(sum(r.gold, ())),
                prompt=r.summary or text(r.input_ids[: r.prompt_len]),
                prediction=" | ".join(p.texts if p.texts is not None else (text(a) for a in p.answers)),
                answer=" | ".join(text(a) for a in r.gold), correct=correct, scores=scores,
                length=r.context_length if c.format != "tokens" else None,
            ))
        start += len(batch)
        yield Progress(unit, len(batch))
    wall = time.perf_counter() - t0
    n_ok = sum(r.correct for r in records)
    lo, hi = wilson(n_ok, len(records))
    metrics = {}
    for name in task_cls.secondary:
        vals = [r.scores[name] for r in records]
        blo, bhi = bootstrap(vals, seed=c.seed)
        metrics[name] = {"mean": float(np.mean(vals)), "ci_low": blo, "ci_high": bhi, "teacher_forced": True}
    tokens = sum(r.length or c.context_length for r in records)
    row = _cell_row(c, run_id, "complete", device, n_correct=n_ok, accuracy=n_ok / len(records),
                    ci_low=lo, ci_high=hi, metrics=metrics, model_info=info, wall_s=wall,
                    tokens_per_s=tokens / wall if wall > 0 else None, n_skipped=skipped)
    yield CellResult(unit, c.cell_key, row, tuple(records))


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def predict_with_backoff(predict: Callable[[Adapter, Sequence[Rendered]], list[Prediction]], adapter: Adapter,
                         batch: Sequence[Rendered], sizing: dict[str, int]) -> list[Prediction]:
    """``predict`` on ``batch``; on out-of-memory, free the cache, halve the batch (and
    ``sizing["bs"]``, so the cell's later batches start smaller) and retry. A single sample that
    does not fit raises: the cell fails with the OOM, the run goes on."""
    try:
        return predict(adapter, batch)
    except Exception as e:  # re-raised unless it is an OOM we can split
        if not _is_oom(e) or len(batch) == 1:
            raise
    import torch  # outside the except block: its traceback no longer pins the failed batch's tensors

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = (len(batch) + 1) // 2
    sizing["bs"] = min(sizing["bs"], half)
    return (predict_with_backoff(predict, adapter, batch[:half], sizing)
            + predict_with_backoff(predict, adapter, batch[half:], sizing))


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
