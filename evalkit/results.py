"""Stored results → pandas: one row per sample, sweep axes as columns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.store import Store

if TYPE_CHECKING:
    import pandas as pd

# columns of model_info promoted to record columns (sweep axes are columns, STYLE.md habit 6)
MODEL_COLUMNS = ("attention_fraction", "attn_layer_idx", "params", "kv_bytes_per_token", "fixed_state_bytes",
                 "d_model", "n_layers", "d_state")  # the last three: axes of model-spec sweeps (docs/training.md)
RECORD_FRAME_COLUMNS = (
    "run_id", "cell_key", "spec", "task", "model", "model_id", "model_kind", "random_weights", "format",
    "context_length", "seed", "idx", "correct", "prediction", "answer", "prompt_hash", "target_hash", "length",
)


def cells_frame(store: Store, cell_keys: list[str] | None = None) -> pd.DataFrame:
    """One row per cell (complete and failed), axes and model facts as columns."""
    import pandas as pd

    rows = [_flatten_cell(c) for c in store.cells() if cell_keys is None or c["cell_key"] in set(cell_keys)]
    return pd.DataFrame(rows)


def records_frame(store: Store, cell_keys: list[str] | None = None) -> pd.DataFrame:
    """One row per scored sample of complete cells, joined with its cell's columns."""
    import pandas as pd

    wanted = set(cell_keys) if cell_keys is not None else None
    rows: list[dict[str, Any]] = []
    for cell in store.cells("WHERE status='complete' ORDER BY spec, model, context_length"):
        if wanted is not None and cell["cell_key"] not in wanted:
            continue
        flat = _flatten_cell(cell)
        for r in store.records(cell["cell_key"]):
            row = {**flat, "idx": r["idx"], "correct": bool(r["correct"]), "prediction": r["prediction"],
                   "answer": r["answer"], "prompt_hash": r["prompt_hash"], "target_hash": r["target_hash"],
                   "length": r.get("length") or cell["context_length"]}  # achieved length (text may differ)
            row.update({f"{k}": v for k, v in (r["scores"] or {}).items()})
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(RECORD_FRAME_COLUMNS))
    return pd.DataFrame(rows)


def _flatten_cell(c: dict[str, Any]) -> dict[str, Any]:
    info = c.get("model_info") or {}
    out = {k: c[k] for k in ("run_id", "cell_key", "status", "error", "spec", "task", "model", "model_id",
                             "model_kind", "format", "context_length", "seed", "n_samples", "scoring",
                             "accuracy", "ci_low", "ci_high", "device", "wall_s", "tokens_per_s")}
    out["random_weights"] = bool(c["random_weights"])
    out.update(c["axes"] or {})
    for k in MODEL_COLUMNS:
        v = info.get(k)
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def load(output_dir: str | Path = "runs") -> pd.DataFrame:
    """Read a store into pandas: per-sample records of every complete cell."""
    store = Store.open_dir(output_dir)
    try:
        return records_frame(store)
    finally:
        store.close()


def query_accuracy(records: pd.DataFrame, by: tuple[str, ...] = ("spec", "model", "context_length")) -> pd.DataFrame:
    """Teacher-forced accuracy by query index, per group of ``records`` (a ``records_frame``).

    Columns ``q1 … qN`` (queries in order of appearance), ``mean``, ``n`` (samples) and
    ``repeats``: the share of queries after the first whose prediction is an earlier query's
    gold answer. On an all-pairs MQAR with the answers shown, a model that answers "a value not
    answered yet" scores 1/P, 1/(P-1), …, 1 by index with no repeats (docs/training.md); one that
    copies any value scores ≈ 1/P everywhere and repeats freely; key matching is flat and high.
    Answers and predictions are the records' `` | ``-joined per-query strings (tokens format).
    """
    import pandas as pd

    rows = []
    for key, group in records.groupby(list(by), sort=True):
        hits: dict[int, list[bool]] = {}
        repeats, later = 0, 0
        for answer, prediction in zip(group["answer"], group["prediction"]):
            gold, pred = str(answer).split(" | "), str(prediction).split(" | ")
            for i, (g, p) in enumerate(zip(gold, pred)):
                hits.setdefault(i, []).append(g == p)
                if i:
                    later += 1
                    repeats += p in gold[:i]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update({f"q{i + 1}": sum(h) / len(h) for i, h in sorted(hits.items())})
        row["mean"] = sum(sum(h) for h in hits.values()) / sum(len(h) for h in hits.values())
        row["repeats"] = repeats / later if later else float("nan")
        row["n"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)
