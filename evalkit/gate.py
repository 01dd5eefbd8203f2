"""CI gate: check stored results against thresholds and a baseline; pass (0), fail (1), bad input (2).

    load_gate(path)                  → GateSpec      (strict YAML, errors name file:line:field)
    evaluate(spec, store=..., ...)   → GateResult    (reads the stores; bad data → SpecError/StoreError)
    rich_table / markdown / junit    → the three renderings of a GateResult

Checks (see docs/gate.md for the statistics):

- ``min_recall``: per context length, the candidate's recall (cells pooled over every non-length
  axis) through its 95 % Wilson lower bound (or the point estimate) must be ≥ the threshold.
- ``min_effective_length``: the longest measured length L such that recall at L and at every
  shorter measured length clears ``threshold`` must be ≥ the minimum.
- ``no_regression``: per cell, candidate and baseline answer the *same* samples (same sample key
  and index), so the test is a paired exact McNemar test; p values are Holm-adjusted across every
  paired unit of the gate, and a unit fails only where adjusted p < α **and** the drop > tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import StoreError
from evalkit.registry import did_you_mean
from evalkit.spec import _check_keys, _Doc, _read
from evalkit.stats import holm, mcnemar_exact, wilson
from evalkit.store import STORE_FILE, Store

BOUNDS = ("wilson_lower", "point")
UNITS = ("cell", "length")
KINDS = ("min_recall", "min_effective_length", "no_regression")
_TOP_FIELDS = ("model", "store", "baseline", "alpha", "tolerance", "bound", "checks", "description")
_BASELINE_FIELDS = ("store", "model")
_CHECK_FIELDS = ("task", "lengths", *KINDS, "threshold", "bound", "tolerance", "unit", "name")
_ONLY_FOR = {"threshold": ("min_effective_length",), "bound": ("min_recall", "min_effective_length"),
             "tolerance": ("no_regression",), "unit": ("no_regression",)}


# --------------------------------------------------------------------------- the gate file
@dataclass(frozen=True)
class Check:
    """One entry of ``checks:``; ``index`` is its position (for file:line in later errors)."""

    index: int
    kind: str
    task: str
    lengths: tuple[int, ...] | None  # None: every length run
    min_recall: float | None = None
    min_effective_length: int | None = None
    threshold: float = 0.5
    bound: str = "wilson_lower"
    tolerance: float = 0.02
    unit: str = "cell"
    name: str = ""


@dataclass(frozen=True)
class GateSpec:
    path: str
    model: str
    store: str | None
    baseline_store: str | None
    baseline_model: str | None
    has_baseline: bool
    alpha: float
    checks: tuple[Check, ...]
    doc: _Doc = field(repr=False, compare=False)


def load_gate(path: str | Path) -> GateSpec:
    """Load and validate a gate file; every error names file, line and field."""
    doc = _read(Path(path))
    d = doc.data
    _check_keys(doc, d, _TOP_FIELDS)
    if "model" not in d:
        raise doc.error((), "missing required field 'model' (the candidate's model name, as in `evalkit run --models`)")
    model = _string(doc, ("model",), d["model"], "a model name")
    store = _string(doc, ("store",), d["store"], "a store path or output dir") if d.get("store") is not None else None
    base = d.get("baseline")
    has_baseline = base is not None
    b_store = b_model = None
    if has_baseline:
        if not isinstance(base, dict) or not base:
            raise doc.error(("baseline",), f"expected a mapping with 'store' and/or 'model', got {base!r}")
        _check_keys(doc, base, _BASELINE_FIELDS, ("baseline",))
        if base.get("store") is not None:
            b_store = _string(doc, ("baseline", "store"), base["store"], "a store path or output dir")
        if base.get("model") is not None:
            b_model = _string(doc, ("baseline", "model"), base["model"], "a model name")
    alpha = _fraction(doc, ("alpha",), d.get("alpha", 0.05), "a significance level", open_ends=True)
    tolerance = _fraction(doc, ("tolerance",), d.get("tolerance", 0.02), "a recall drop")
    bound = _choice(doc, ("bound",), d.get("bound", "wilson_lower"), BOUNDS)
    checks = d.get("checks")
    if not isinstance(checks, list) or not checks:
        raise doc.error(("checks",), f"expected a non-empty list of checks, got {checks!r}")
    out = tuple(_check(doc, i, c, bound, tolerance, has_baseline) for i, c in enumerate(checks))
    return GateSpec(str(path), model, store, b_store, b_model, has_baseline, alpha, out, doc)


def _check(doc: _Doc, i: int, c: Any, bound: str, tolerance: float, has_baseline: bool) -> Check:
    at = ("checks", i)
    if not isinstance(c, dict):
        raise doc.error(at, f"expected a mapping like {{task: needle, min_recall: 0.8}}, got {c!r}")
    _check_keys(doc, c, _CHECK_FIELDS, at)
    kinds = [k for k in KINDS if k in c]
    if len(kinds) != 1:
        got = f"got {', '.join(kinds)}" if kinds else "got none"
        raise doc.error(at, f"a check needs exactly one of {', '.join(KINDS)} ({got})")
    kind = kinds[0]
    for key, allowed in _ONLY_FOR.items():
        if key in c and kind not in allowed:
            raise doc.error((*at, key), f"applies only to {' / '.join(allowed)} checks, not {kind}")
    if "task" not in c:
        raise doc.error(at, "missing required field 'task' (a task spec name, as stored in cells.spec)")
    task = _string(doc, (*at, "task"), c["task"], "a task spec name")
    lengths = None
    if "lengths" in c:
        ls = c["lengths"]
        if not isinstance(ls, list) or not ls:
            raise doc.error((*at, "lengths"), f"expected a non-empty list of context lengths, got {ls!r}")
        for j, n in enumerate(ls):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise doc.error((*at, "lengths", j), f"expected a positive integer context length, got {n!r}")
        lengths = tuple(sorted(set(ls)))
    kw: dict[str, Any] = {"index": i, "kind": kind, "task": task, "lengths": lengths,
                          "name": str(c.get("name") or "")}
    if kind == "min_recall":
        kw["min_recall"] = _fraction(doc, (*at, "min_recall"), c["min_recall"], "a recall")
    elif kind == "min_effective_length":
        v = c["min_effective_length"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise doc.error((*at, "min_effective_length"), f"expected a positive integer context length, got {v!r}")
        kw["min_effective_length"] = v
        kw["threshold"] = _fraction(doc, (*at, "threshold"), c.get("threshold", 0.5), "a recall")
    else:
        if c["no_regression"] is not True:
            raise doc.error((*at, "no_regression"), f"expected true (remove the check to disable it), got {c['no_regression']!r}")
        if not has_baseline:
            raise doc.error((*at, "no_regression"), "needs a baseline: add a top-level 'baseline:' with 'store' and/or 'model'")
        kw["tolerance"] = _fraction(doc, (*at, "tolerance"), c.get("tolerance", tolerance), "a recall drop")
        kw["unit"] = _choice(doc, (*at, "unit"), c.get("unit", "cell"), UNITS)
    if kind != "no_regression":
        kw["bound"] = _choice(doc, (*at, "bound"), c.get("bound", bound), BOUNDS)
    return Check(**kw)


def _string(doc: _Doc, at: tuple, v: Any, what: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise doc.error(at, f"expected {what}, got {v!r}")
    return v


def _choice(doc: _Doc, at: tuple, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise doc.error(at, f"unknown value {v!r}{did_you_mean(str(v), choices)}")
    return v


def _fraction(doc: _Doc, at: tuple, v: Any, what: str, open_ends: bool = False) -> float:
    """A number in [0, 1] (or (0, 1)); a percentage such as 80 gets a hint."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise doc.error(at, f"expected {what} as a number between 0 and 1, got {v!r}")
    bad = not (0 < v < 1) if open_ends else not (0 <= v <= 1)
    if bad:
        hint = f" (write {v / 100:g} for {v:g}%)" if 1 < v <= 100 else ""
        ends = "strictly between 0 and 1" if open_ends else "between 0 and 1"
        raise doc.error(at, f"expected {what} {ends}, got {v!r}{hint}")
    return float(v)


# --------------------------------------------------------------------------- reading the stores
def store_file(ref: str | Path) -> Path:
    """The store file meant by an output dir (holding evalkit.sqlite) or by a store file path."""
    p = Path(ref)
    return p if p.is_file() or p.suffix in (".sqlite", ".db") else p / STORE_FILE


def open_store(ref: str | Path) -> Store:
    """Open an existing store; never creates one."""
    return Store(store_file(ref))


@dataclass
class Side:
    """One model's cells in one store: the latest model identity, one cell per sample key."""

    label: str  # "candidate" | "baseline"
    model: str
    path: str
    model_id: str
    n_identities: int
    random_weights: bool
    cells: list[dict[str, Any]]  # complete cells, deduplicated by sample key
    failed: list[dict[str, Any]]
    store: Store


def _load_side(doc: _Doc, label: str, store_ref: str, model: str, model_field: tuple) -> Side:
    store = open_store(store_ref)
    path = str(store.path)
    every = store.cells()
    done = [c for c in every if c["status"] == "complete"]
    if not done:
        store.close()
        raise StoreError(f"{label} store {path} holds no complete cells (an empty store; run `evalkit run` into it first)")
    mine = [c for c in done if c["model"] == model]
    if not mine:
        store.close()
        names = sorted({c["model"] for c in done})
        raise doc.error(model_field, f"{label} model '{model}' has no complete cells in {path}{did_you_mean(model, names)}")
    # a checkpoint retrained in place gets a new identity; the newest identity is the one gated
    latest: dict[str, str] = {}
    for c in mine:
        latest[c["model_id"]] = max(latest.get(c["model_id"], ""), c["finished_at"])
    model_id = max(latest, key=lambda k: latest[k])
    by_sample: dict[str, dict[str, Any]] = {}
    for c in mine:
        if c["model_id"] != model_id:
            continue
        prev = by_sample.get(c["sample_key"])  # same samples scored twice (e.g. --samples 10, then 50)
        if prev is None or (c["n_samples"], c["finished_at"]) > (prev["n_samples"], prev["finished_at"]):
            by_sample[c["sample_key"]] = c
    cells = sorted(by_sample.values(), key=lambda c: (c["spec"], c["context_length"], sorted(c["axes"].items())))
    failed = [c for c in every if c["status"] == "failed" and c["model"] == model]
    return Side(label, model, path, model_id, len(latest), any(c["random_weights"] for c in cells), cells, failed, store)


def _gated_cells(doc: _Doc, side: Side, check: Check) -> dict[int, list[dict[str, Any]]]:
    """The side's cells of the check's task, by context length; unknown task / length → SpecError."""
    at = ("checks", check.index)
    mine = [c for c in side.cells if c["spec"] == check.task]
    if not mine:
        tasks = sorted({c["spec"] for c in side.cells})
        raise doc.error((*at, "task"), f"task '{check.task}' was never run for model '{side.model}' in {side.path}"
                                       f"{did_you_mean(check.task, tasks)}")
    by_len: dict[int, list[dict[str, Any]]] = {}
    for c in mine:
        by_len.setdefault(c["context_length"], []).append(c)
    if check.lengths is None:
        return dict(sorted(by_len.items()))
    for n in check.lengths:
        if n not in by_len:
            j = doc.data["checks"][check.index]["lengths"].index(n)  # position in the file, for its line
            failed = any(c["spec"] == check.task and c["context_length"] == n for c in side.failed)
            why = "its cells failed" if failed else "it was never run"
            raise doc.error((*at, "lengths", j), f"{check.task} at length {n}: {why} for model '{side.model}' in "
                                                 f"{side.path} (complete lengths: {', '.join(map(str, sorted(by_len)))})")
    return {n: by_len[n] for n in check.lengths}


# --------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Outcome:
    """One row of the gate's report."""

    check: str  # the check's kind, or its name
    task: str
    where: str  # "L=1024", "L=1024 depth=0.5", "256…4096"
    value: str
    target: str
    passed: bool
    detail: str = ""


@dataclass
class GateResult:
    gate: str
    candidate: str
    baseline: str | None
    outcomes: list[Outcome]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def n_failed(self) -> int:
        return sum(not o.passed for o in self.outcomes)


def _recall(cells: Sequence[dict[str, Any]], bound: str) -> tuple[float, int, int]:
    """(value compared with the threshold, n correct, n) of pooled cells."""
    k = sum(c["n_correct"] for c in cells)
    n = sum(c["n_samples"] for c in cells)
    return (wilson(k, n)[0] if bound == "wilson_lower" else k / n), k, n


def _bound_name(bound: str) -> str:
    return "Wilson lower" if bound == "wilson_lower" else "recall"


def evaluate(spec: GateSpec, store: str | Path | None = None) -> GateResult:
    """Run every check of ``spec``. ``store`` (CLI --store / --output-dir) overrides the file's."""
    doc = spec.doc
    cand_ref = str(store if store is not None else spec.store or "runs")
    cand = _load_side(doc, "candidate", cand_ref, spec.model, ("model",))
    base = None
    try:
        if any(c.kind == "no_regression" for c in spec.checks):
            base_ref = spec.baseline_store or cand_ref
            base_model = spec.baseline_model or spec.model
            if store_file(base_ref).resolve() == store_file(cand_ref).resolve() and base_model == spec.model:
                raise doc.error(("baseline",), f"the baseline is the candidate itself (model '{spec.model}' in {cand_ref}); "
                                               "name another 'store' or 'model'")
            field_ = ("baseline", "model") if spec.baseline_model else ("model",)
            base = _load_side(doc, "baseline", base_ref, base_model, field_)
        per_check: list[list[Outcome]] = []  # rows in the order of the gate file
        regressions: list[tuple[Check, str, _Pair]] = []
        for check in spec.checks:
            by_len = _gated_cells(doc, cand, check)
            if check.kind == "min_recall":
                per_check.append(_min_recall(check, by_len))
            elif check.kind == "min_effective_length":
                per_check.append([_effective_length(doc, check, by_len)])
            else:
                assert base is not None
                regressions += _pair(doc, check, by_len, cand, base)
                per_check.append([])
        # one Holm family: every paired unit of every no_regression check
        for (check, _, _), row in zip(regressions, _regression_outcomes(regressions, spec.alpha)):
            per_check[check.index].append(row)
        outcomes = [o for rows in per_check for o in rows]
        notes = [_describe(cand)]
        if base is not None:
            notes.append(_describe(base))
        notes += _power_note(regressions, spec.alpha)
        return GateResult(spec.path, f"{cand.model} ({cand.path})", f"{base.model} ({base.path})" if base else None,
                          outcomes, notes)
    finally:
        cand.store.close()
        if base is not None:
            base.store.close()


def _describe(side: Side) -> str:
    extra = f", newest of {side.n_identities} identities" if side.n_identities > 1 else ""
    rand = "; RANDOM WEIGHTS (no checkpoint)" if side.random_weights else ""
    return f"{side.label}: {side.model} in {side.path} (model_id {side.model_id}{extra}, {len(side.cells)} cells{rand})"


def _min_recall(check: Check, by_len: dict[int, list[dict[str, Any]]]) -> list[Outcome]:
    out = []
    for n_ctx, cells in by_len.items():
        v, k, n = _recall(cells, check.bound)
        value = f"{v:.3f}" + (f" (recall {k}/{n} = {k / n:.3f})" if check.bound == "wilson_lower" else f" ({k}/{n})")
        out.append(Outcome(check.name or "min_recall", check.task, f"L={n_ctx}", value,
                           f"{_bound_name(check.bound)} ≥ {check.min_recall:g}", v >= check.min_recall))
    return out


def _effective_length(doc: _Doc, check: Check, by_len: dict[int, list[dict[str, Any]]]) -> Outcome:
    """Effective length = the longest measured L whose recall, and that of every shorter measured
    length, clears the threshold (0 when the shortest does not)."""
    longest = max(by_len)
    if check.min_effective_length > longest:  # type: ignore[operator]
        raise doc.error(("checks", check.index, "min_effective_length"),
                        f"{check.min_effective_length} is longer than any length of {check.task} in the store "
                        f"(longest: {longest}), so the check could never pass; run longer lengths or lower it")
    effective, first_below = 0, ""
    for n_ctx, cells in sorted(by_len.items()):
        v, k, n = _recall(cells, check.bound)
        if v < check.threshold:
            first_below = f"L={n_ctx}: {_bound_name(check.bound)} {v:.3f} ({k}/{n}) < {check.threshold:g}"
            break
        effective = n_ctx
    lens = sorted(by_len)
    return Outcome(check.name or "min_effective_length", check.task, f"L={lens[0]}…{lens[-1]}", str(effective),
                   f"≥ {check.min_effective_length} ({_bound_name(check.bound)} ≥ {check.threshold:g})",
                   effective >= check.min_effective_length,  # type: ignore[operator]
                   first_below or "every measured length clears the threshold")


@dataclass(frozen=True)
class _Pair:
    unit: str  # the tested unit's label
    n: int  # paired samples
    base_k: int
    cand_k: int
    b: int  # baseline right, candidate wrong
    c: int  # candidate right, baseline wrong


def _pair(doc: _Doc, check: Check, by_len: dict[int, list[dict[str, Any]]], cand: Side,
          base: Side) -> list[tuple[Check, str, _Pair]]:
    """Pair candidate and baseline records by (sample key, index), summed per tested unit."""
    at = ("checks", check.index, "no_regression")
    base_by_sample = {c["sample_key"]: c for c in base.cells}
    units: dict[str, list[int]] = {}  # label → [n, base_k, cand_k, b, c]
    for n_ctx, cells in by_len.items():
        for cell in cells:
            other = base_by_sample.get(cell["sample_key"])
            axes = " ".join(f"{k}={v}" for k, v in sorted(cell["axes"].items()))
            label = f"L={n_ctx}" + (f" {axes}" if axes and check.unit == "cell" else "")
            if other is None:
                raise doc.error(at, f"baseline '{base.model}' in {base.path} has no cell with the samples of "
                                    f"{check.task} L={n_ctx}{' ' + axes if axes else ''} (sample key {cell['sample_key']}); "
                                    "run the baseline on the same task spec, lengths and seed")
            cand_r = {r["idx"]: bool(r["correct"]) for r in cand.store.records(cell["cell_key"])}
            base_r = {r["idx"]: bool(r["correct"]) for r in base.store.records(other["cell_key"])}
            common = sorted(cand_r.keys() & base_r.keys())
            if not common:
                raise doc.error(at, f"{check.task} {label}: candidate and baseline cells share no sample index")
            acc = units.setdefault(label, [0, 0, 0, 0, 0])
            for i in common:
                acc[0] += 1
                acc[1] += base_r[i]
                acc[2] += cand_r[i]
                acc[3] += base_r[i] and not cand_r[i]
                acc[4] += cand_r[i] and not base_r[i]
    return [(check, check.task, _Pair(label, *v)) for label, v in units.items()]


def _power_note(pairs: list[tuple[Check, str, _Pair]], alpha: float) -> list[str]:
    """Say so when some units are too small to ever be flagged: with m tests, the best a unit of n
    paired samples can reach (all n discordant one way, ranked first) is m · 2^(1-n)."""
    m = len(pairs)
    small = [p.n for _, _, p in pairs if min(1.0, m * 2.0 ** (1 - p.n)) >= alpha]
    if not small:
        return []
    return [f"no_regression: {len(small)} of {m} tested units have so few paired samples (n ≤ {max(small)}) "
            f"that no drop there can reach Holm-adjusted p < {alpha:g}; pool them with 'unit: length' or run more samples"]


def _regression_outcomes(pairs: list[tuple[Check, str, _Pair]], alpha: float) -> list[Outcome]:
    """Exact McNemar per unit, Holm across all units of the gate; fail iff adjusted p < α and drop > tolerance."""
    ps = [mcnemar_exact(p.b, p.c) for _, _, p in pairs]
    adjusted = holm(ps)
    out = []
    for (check, task, p), raw, adj in zip(pairs, ps, adjusted):
        base_acc, cand_acc = p.base_k / p.n, p.cand_k / p.n
        drop = base_acc - cand_acc
        significant = adj < alpha
        failed = significant and drop > check.tolerance
        value = f"{base_acc:.3f} → {cand_acc:.3f} ({(p.cand_k - p.base_k) * 100 / p.n:+.1f} pts, n={p.n})"
        detail = f"b={p.b} c={p.c}, McNemar p={raw:.3g}, Holm p={adj:.3g}"
        if drop > check.tolerance and not significant:
            detail += " (drop within noise)"
        out.append(Outcome(check.name or "no_regression", task, p.unit, value,
                           f"drop ≤ {check.tolerance * 100:g} pts or Holm p ≥ {alpha:g}", not failed, detail))
    return out


# --------------------------------------------------------------------------- renderings
def rich_table(result: GateResult) -> Any:
    from rich.table import Table

    t = Table(title=f"evalkit gate {result.gate}: {'PASS' if result.passed else 'FAIL'}")
    for col in ("result", "check", "task", "where", "value", "target", "detail"):
        t.add_column(col, overflow="fold")
    for o in result.outcomes:
        t.add_row("[green]pass[/]" if o.passed else "[bold red]FAIL[/]", o.check, o.task, o.where, o.value, o.target, o.detail)
    t.caption = "\n".join(result.notes)
    return t


def summary_line(result: GateResult) -> str:
    n = len(result.outcomes)
    if result.passed:
        return f"PASS: all {n} checks passed"
    return f"FAIL: {result.n_failed} of {n} checks failed"


def markdown(result: GateResult) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"### evalkit gate `{result.gate}`: {'✅ PASS' if result.passed else '❌ FAIL'}", "",
             summary_line(result), "",
             "| result | check | task | where | value | target | detail |",
             "|---|---|---|---|---|---|---|"]
    for o in result.outcomes:
        cells = ["pass" if o.passed else "**FAIL**", o.check, o.task, o.where, o.value, o.target, o.detail]
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    lines += [""] + [f"- {esc(n)}" for n in result.notes] + [""]
    return "\n".join(lines)


def junit(result: GateResult) -> str:
    """JUnit XML: one test case per outcome, a <failure> on each failed one."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="evalkit gate", tests=str(len(result.outcomes)), failures=str(result.n_failed))
    suite = ET.SubElement(suites, "testsuite", name=f"evalkit gate {result.gate}", tests=str(len(result.outcomes)),
                          failures=str(result.n_failed), errors="0", skipped="0")
    for o in result.outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"evalkit.gate.{o.task}", name=f"{o.check} {o.where}")
        msg = f"{o.value}; expected {o.target}" + (f"; {o.detail}" if o.detail else "")
        if o.passed:
            ET.SubElement(case, "system-out").text = msg
        else:
            ET.SubElement(case, "failure", message=msg, type=o.check).text = msg
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_outputs(result: GateResult, junit_path: str | None, markdown_path: str | None) -> list[str]:
    """Write the requested files and append to $GITHUB_STEP_SUMMARY when set; returns what was written."""
    written = []
    if junit_path:
        Path(junit_path).write_text(junit(result))
        written.append(junit_path)
    md = markdown(result)
    if markdown_path:
        Path(markdown_path).write_text(md)
        written.append(markdown_path)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(md + "\n")
        written.append(summary)
    return written
