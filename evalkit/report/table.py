"""The terminal table that ends ``evalkit run``: recall per model × context length.

Needle depth is pooled (it is the heatmap axis, not a leaderboard row); every other sweep axis
stays a row. Each entry is whole-answer exact match with its 95 % Wilson interval and the pooled
sample count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalkit.stats import wilson
from evalkit.store import Store

POOLED_AXES = ("depth",)


def aggregate(cells: Sequence[dict[str, Any]]) -> dict[tuple, dict[int, tuple[int, int]]]:
    """(spec, model, other axes) → {context_length: (n_correct, n)} over complete cells."""
    out: dict[tuple, dict[int, tuple[int, int]]] = {}
    for c in cells:
        if c["status"] != "complete":
            continue
        axes = tuple((k, v) for k, v in sorted(c["axes"].items()) if k not in POOLED_AXES)
        row = out.setdefault((c["spec"], c["model"], axes), {})
        k, n = row.get(c["context_length"], (0, 0))
        row[c["context_length"]] = (k + c["n_correct"], n + c["n_samples"])
    return out


def recall_table(store: Store, cell_keys: Sequence[str]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    keys = set(cell_keys)
    cells = [c for c in store.cells() if c["cell_key"] in keys]
    agg = aggregate(cells)
    lengths = sorted({c["context_length"] for c in cells})
    failed = {(c["spec"], c["model"], c["context_length"]) for c in cells if c["status"] == "failed"}
    t = Table(title="recall (whole-answer exact match, 95% Wilson interval, n samples)")
    for col in ("task", "model", "axes"):
        t.add_column(col)
    for L in lengths:
        t.add_column(f"L={L}", justify="right")
    for (spec, model, axes), row in sorted(agg.items()):
        entries = []
        for L in lengths:
            if L in row:
                k, n = row[L]
                lo, hi = wilson(k, n)
                entries.append(f"{k / n:.2f} [{lo:.2f},{hi:.2f}] n={n}")
            else:
                entries.append("FAILED" if (spec, model, L) in failed else "-")
        # names are text, not rich markup: a swept variant is named like "hybrid[attention_fraction=0.5]"
        t.add_row(escape(spec), escape(model), escape(" ".join(f"{k}={v}" for k, v in axes)), *entries)
    return t
