"""Plan cells from specs × models × axes, evaluate them, store them; resume what is done.

    plan(task specs, model specs)  → [Cell]          (pure; no model is loaded)
    execute(cells, output_dir)      → RunResult       (loads each model once, batches by length,
                                                       writes each cell atomically)

The cell key is defined here, once, for every later capability:

    sample_key = H(generator version, task name + version, resolved params, format, render options,
                   tokenizer identity, context length, seed)
                 (tokens: render options = {filler}, tokenizer = None — unchanged since schema 1;
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evalkit.errors import ContextLengthError, EvalkitError, SpecError
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
    """What, besides the sample, decides the rendering: the tokens format's filler; the text
    format's resolved options, over-length policy and the model's options (chat template)."""
    if fmt != "text":
        return {"filler": spec.filler}
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
                    if fmt == "text":
                        skey = _sample_key(spec, point, fmt, length, s, render_opts, tokenizer)
                    else:
                        skey = _sample_key(spec, point, fmt, length, s)
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
    if progress and skipped:
        progress(skipped)
    text = readable(c)
    if c.scoring == "teacher_forced":
        predict = predict_teacher_forced
    else:
        limit = type(adapter).max_context(adapter.spec)
        extra = GREEDY_EXTRA_TOKENS if limit is None else max(0, min(GREEDY_EXTRA_TOKENS, limit - c.context_length))
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
                idx=i, prompt_hash=_h(r.input_ids[: r.prompt_len]), target_hash=_h(sum(_expected(r), ())),
                prompt=r.summary or text(r.input_ids[: r.prompt_len]),
                prediction=" | ".join(p.texts if p.texts is not None else (text(a) for a in p.answers)),
                answer=" | ".join(text(a) for a in _expected(r)), correct=correct, scores=scores,
                length=r.context_length if c.format != "tokens" else None,
            ))
        start += len(batch)
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
    tokens = sum(r.length or c.context_length for r in records)
    row = _cell_row(c, result.run_id, "complete", device, n_correct=n_ok, accuracy=n_ok / len(records),
                    ci_low=lo, ci_high=hi, metrics=metrics, model_info=info, wall_s=wall,
                    tokens_per_s=tokens / wall if wall > 0 else None, n_skipped=skipped)
    store.write_cell(row, records)
    result.ran.append(c.cell_key)


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
