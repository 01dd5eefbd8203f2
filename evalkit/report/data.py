"""Store → the plain data a report shows: leaderboard rows, recall curves, needle heatmaps, cost
points with fitted scaling exponents, and run provenance.

Primary recall is pooled over every non-length axis but the leaderboard's row axes (needle depth
is pooled, as in the terminal table) and shown with its 95 % Wilson interval. Costs come from the
``costs`` table; a store without cost rows still reports, with the cost parts saying so.

**Effective length** (RULER's term) is the longest context length whose recall reaches a
threshold. Each row uses its task's own threshold when the task plugin declares one
(``effective_length_threshold``: RULER's NIAH uses 0.856, the score of Llama-2-7B, as RULER does),
else ``DEFAULT_THRESHOLD``; a threshold given explicitly (``--threshold``) overrides all of them.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.report.table import POOLED_AXES, aggregate
from evalkit.stats import wilson
from evalkit.store import Store

NO_COST_DATA = "no cost data (run `evalkit cost` or `evalkit run`)"
DEFAULT_THRESHOLD = 0.5  # effective-length threshold of tasks that declare none
# cost metrics a recall-vs-cost panel can use: column → axis label
COST_METRICS = {
    "prefill_s": "prefill latency (s)",
    "state_bytes": "state bytes (KV cache + fixed state)",
    "decode_s_per_token": "decode latency (s / token)",
    "flops_per_token": "FLOPs / token",
}


@dataclass(frozen=True)
class Recall:
    """Pooled whole-answer exact match: k of n samples, its Wilson interval, or a failure."""

    k: int = 0
    n: int = 0
    error: str | None = None  # set when every cell here failed

    @property
    def failed(self) -> bool:
        return self.n == 0 and self.error is not None

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.k, self.n)


@dataclass(frozen=True)
class ModelFacts:
    """What a model is, from its cells' ``model_info`` (the adapter's ``describe()``)."""

    name: str
    architecture: str
    attention_fraction: float | None
    params: int | None
    random_weights: bool
    kv_bytes_per_token: int | None
    fixed_state_bytes: int | None

    def state_bytes(self, length: int) -> int | None:
        if self.kv_bytes_per_token is None and self.fixed_state_bytes is None:
            return None
        return (self.kv_bytes_per_token or 0) * length + (self.fixed_state_bytes or 0)


@dataclass(frozen=True)
class LeaderRow:
    """One leaderboard row: a (task spec, model, non-pooled axes) with recall per length."""

    spec: str
    model: str
    axes: tuple[tuple[str, Any], ...]
    recall: dict[int, Recall]
    effective_length: int | None  # longest length with recall ≥ threshold
    threshold: float = DEFAULT_THRESHOLD  # the effective-length threshold this row used

    @property
    def axes_label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.axes)

    @property
    def label(self) -> str:
        return f"{self.model} {self.axes_label}".strip()


@dataclass(frozen=True)
class ReportData:
    threshold: float | None  # the explicit effective-length threshold for every row; None: each task's own
    reference_length: int
    lengths: list[int]
    specs: list[str]
    models: dict[str, ModelFacts]
    rows: list[LeaderRow]
    # (spec, model) → {(depth, length): Recall}, for specs swept over needle depth
    heatmaps: dict[tuple[str, str], dict[tuple[float, int], Recall]]
    # (spec, model) → Recall pooled over every cell of the spec at the reference length
    recall_at_ref: dict[tuple[str, str], Recall]
    # model → {length: cost row} of ok cost points on ``cost_device`` (empty: no cost data)
    costs: dict[str, dict[int, dict[str, Any]]]
    cost_device: str | None
    exponents: dict[str, float | None]  # model → fitted prefill scaling exponent
    runs: list[dict[str, Any]]
    n_cells: int = 0
    n_failed: int = 0
    random_models: list[str] = field(default_factory=list)

    @property
    def thresholds(self) -> list[float]:
        """The distinct thresholds the rows used, ascending."""
        return sorted({r.threshold for r in self.rows})

    def threshold_note(self) -> str:
        """One sentence: which threshold the effective length used, and where it came from."""
        if self.threshold is not None:
            return f"Effective length = longest context length with recall ≥ {self.threshold:g} (--threshold)."
        declared = sorted({(r.spec, r.threshold) for r in self.rows if r.threshold != DEFAULT_THRESHOLD})
        own = "; ".join(f"{spec}: {t:g}" for spec, t in declared)
        return ("Effective length = longest context length with recall ≥ the row's threshold: the task's own where it "
                f"declares one ({own or 'none here'}; RULER's NIAH uses 0.856), else {DEFAULT_THRESHOLD:g}; "
                "--threshold sets one for every row.")

    def cost_at(self, model: str, metric: str, length: int | None = None) -> float | None:
        """A cost metric of ``model`` at ``length`` (default: the reference length), or None."""
        row = self.costs.get(model, {}).get(self.reference_length if length is None else length)
        if row is None:
            return None
        if metric == "state_bytes":
            kv, fixed = row.get("kv_cache_bytes"), row.get("fixed_state_bytes")
            return None if kv is None and fixed is None else float((kv or 0) + (fixed or 0))
        v = row.get(metric)
        return None if v is None else float(v)

    def state_bytes_at_ref(self, model: str) -> float | None:
        measured = self.cost_at(model, "state_bytes")
        if measured is not None:
            return measured
        v = self.models[model].state_bytes(self.reference_length)
        return None if v is None else float(v)


def scaling_exponent(lengths: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(length): cost ∝ length^slope.

    None when fewer than two distinct lengths with positive times are given."""
    import numpy as np

    pts = [(float(L), float(s)) for L, s in zip(lengths, seconds) if L and s and L > 0 and s > 0]
    if len({L for L, _ in pts}) < 2:
        return None
    x = np.log([L for L, _ in pts])
    y = np.log([s for _, s in pts])
    slope = np.polyfit(x, y, 1)[0]
    return float(slope)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower cost x and higher recall y), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def architecture(info: dict[str, Any]) -> str:
    """A short architecture label from ``describe()``: transformer, <ssm>, or hybrid (<types>)."""
    if info.get("architecture"):
        return str(info["architecture"])
    types = list(dict.fromkeys(str(t) for t in info.get("layer_types") or []))
    frac = info.get("attention_fraction")
    if not types:
        if frac is None:
            return "?"
        return "transformer" if frac >= 1 else "ssm" if frac <= 0 else "hybrid"
    if len(types) == 1:
        return "transformer" if types[0] == "attention" else types[0]
    return "hybrid (" + "+".join(types) + ")"


def task_threshold(task: str) -> float:
    """The effective-length threshold the task plugin ``task`` declares (its class attribute
    ``effective_length_threshold``), else DEFAULT_THRESHOLD (also for a task no longer installed)."""
    import evalkit.tasks  # noqa: F401  (registers the built-in task plugins: light, no torch)
    from evalkit.tasks.base import TASKS, Task

    found: type[Task] | None = None
    stack = list(Task.__subclasses__())
    while stack and found is None:  # the built-in and already imported plugins, without importing the rest
        cls = stack.pop()
        found = cls if getattr(cls, "name", None) == task else None
        stack += cls.__subclasses__()
    if found is None:
        try:
            found = TASKS.get(task)  # a plugin from an entry point (this imports every plugin)
        except EvalkitError:
            return DEFAULT_THRESHOLD
    value = getattr(found, "effective_length_threshold", None)
    return DEFAULT_THRESHOLD if value is None else float(value)


def load_report(store: Store, threshold: float | None = None, reference_length: int | None = None) -> ReportData:
    """Read everything a report shows from ``store``; EvalkitError when there is nothing to show.
    ``threshold``: the effective-length threshold of every row; None: each task's own (see above)."""
    cells = store.cells("ORDER BY spec, model, context_length")
    complete = [c for c in cells if c["status"] == "complete"]
    if not complete:
        raise EvalkitError(f"{store.path} has no complete cells to report (run `evalkit run ... --output-dir DIR` first)")
    lengths = sorted({c["context_length"] for c in cells})  # a length whose cells all failed shows as FAILED
    done = sorted({c["context_length"] for c in complete})
    if reference_length is None:
        reference_length = done[-1]
    elif reference_length not in done:
        raise EvalkitError(f"--reference-length {reference_length} is not a context length in {store.path} "
                           f"(stored lengths: {', '.join(map(str, done))})")

    models: dict[str, ModelFacts] = {}
    for c in cells:
        info = c.get("model_info") or {}
        prev = models.get(c["model"])
        if prev is None or (not prev.params and info):
            models[c["model"]] = ModelFacts(
                name=c["model"], architecture=architecture(info) if info else "?",
                attention_fraction=info.get("attention_fraction"), params=info.get("params"),
                random_weights=bool(c["random_weights"]) or bool(prev and prev.random_weights),
                kv_bytes_per_token=info.get("kv_bytes_per_token"), fixed_state_bytes=info.get("fixed_state_bytes"))
        elif c["random_weights"] and not prev.random_weights:
            models[c["model"]] = ModelFacts(**{**prev.__dict__, "random_weights": True})

    errors: dict[tuple, str] = {}
    for c in cells:
        if c["status"] == "failed":
            axes = tuple((k, v) for k, v in sorted(c["axes"].items()) if k not in POOLED_AXES)
            errors.setdefault((c["spec"], c["model"], axes, c["context_length"]), c.get("error") or "failed")
    agg = aggregate(cells)
    for spec, model, axes, L in errors:  # rows whose every cell failed still get a row
        agg.setdefault((spec, model, axes), {})
    spec_task = {c["spec"]: c["task"] for c in cells}
    by_task = {t: task_threshold(t) for t in sorted(set(spec_task.values()))} if threshold is None else {}
    rows = []
    for (spec, model, axes), per_len in sorted(agg.items()):
        row_threshold = threshold if threshold is not None else by_task[spec_task[spec]]
        recall: dict[int, Recall] = {}
        for L in lengths:
            if L in per_len:
                recall[L] = Recall(*per_len[L])
            elif (spec, model, axes, L) in errors:
                recall[L] = Recall(error=errors[(spec, model, axes, L)])
        ok = [L for L, r in recall.items() if r.value is not None and r.value >= row_threshold]
        rows.append(LeaderRow(spec, model, axes, recall, max(ok) if ok else None, row_threshold))

    heatmaps: dict[tuple[str, str], dict[tuple[float, int], Recall]] = {}
    pooled: dict[tuple[str, str, float, int], list[int]] = {}
    for c in cells:
        if "depth" not in c["axes"]:
            continue
        key = (c["spec"], c["model"], float(c["axes"]["depth"]), c["context_length"])
        acc = pooled.setdefault(key, [0, 0, 0])
        if c["status"] == "complete":
            acc[0] += c["n_correct"]
            acc[1] += c["n_samples"]
        else:
            acc[2] += 1
    for (spec, model, depth, L), (k, n, nfail) in pooled.items():
        heatmaps.setdefault((spec, model), {})[(depth, L)] = Recall(k, n, None if n or not nfail else "failed")

    recall_at_ref: dict[tuple[str, str], Recall] = {}
    for c in complete:
        if c["context_length"] == reference_length:
            r = recall_at_ref.get((c["spec"], c["model"]), Recall())
            recall_at_ref[(c["spec"], c["model"])] = Recall(r.k + c["n_correct"], r.n + c["n_samples"])

    costs, device = _costs(store, cells)
    exponents = {m: scaling_exponent(list(pts), [p["prefill_s"] for p in pts.values()]) for m, pts in costs.items()}
    return ReportData(
        threshold=threshold, reference_length=reference_length, lengths=lengths,
        specs=sorted({c["spec"] for c in cells}), models=dict(sorted(models.items())), rows=rows,
        heatmaps=dict(sorted(heatmaps.items())), recall_at_ref=recall_at_ref, costs=costs, cost_device=device,
        exponents=exponents, runs=_runs(store, cells), n_cells=len(cells),
        n_failed=sum(c["status"] == "failed" for c in cells),
        random_models=sorted(m for m, f in models.items() if f.random_weights),
    )


def _costs(store: Store, cells: list[dict[str, Any]]) -> tuple[dict[str, dict[int, dict[str, Any]]], str | None]:
    """ok cost points of the reported models on one device (the one with most points)."""
    ids: dict[str, set[str]] = {}
    for c in cells:
        ids.setdefault(c["model"], set()).add(c["model_id"])
    rows = [r for r in store.costs("WHERE status='ok' AND prefill_s IS NOT NULL ORDER BY batch") if r["model"] in ids]
    if not rows:
        return {}, None
    per_device: dict[str, int] = {}
    for r in rows:
        per_device[r["device_name"]] = per_device.get(r["device_name"], 0) + 1
    device = max(sorted(per_device), key=lambda d: per_device[d])
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:  # batch 1 first (ORDER BY batch); a point of this model's own identity wins
        if r["device_name"] != device:
            continue
        pts = out.setdefault(r["model"], {})
        prev = pts.get(r["context_length"])
        if prev is None or (prev["model_id"] not in ids[r["model"]] and r["model_id"] in ids[r["model"]]):
            pts[r["context_length"]] = r
    return {m: dict(sorted(p.items())) for m, p in sorted(out.items())}, device


def _runs(store: Store, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Provenance rows: every run that (last) computed a reported cell, with its seeds and counts."""
    per_run: dict[str, dict[str, Any]] = {}
    for c in cells:
        r = per_run.setdefault(c["run_id"], {"cells": 0, "failed": 0, "samples": 0, "seeds": set()})
        r["cells"] += 1
        r["failed"] += c["status"] == "failed"
        r["samples"] += c["n_samples"] if c["status"] == "complete" else 0
        r["seeds"].add(c["seed"])
    out = []
    for run in store.runs():
        if run["run_id"] in per_run:
            extra = per_run[run["run_id"]]
            out.append({**run, **extra, "seeds": sorted(extra["seeds"])})
    return out


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same directory and os.replace, so a
    reader (or a failing report) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
