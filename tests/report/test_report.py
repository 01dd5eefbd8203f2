"""`evalkit report`: report data (pooling, intervals, effective length, exponents, Pareto), the
self-contained HTML file, markdown, atomic writes and bad input."""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from evalkit.errors import EvalkitError
from evalkit.report.data import (
    NO_COST_DATA,
    load_report,
    pareto_front,
    scaling_exponent,
    write_atomic,
)
from evalkit.stats import wilson
from evalkit.store import Record, Store

LENGTHS = (256, 512, 1024, 2048, 4096)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
N = 20
# name → (attention fraction, layer types, random weights, recall at 256 tokens, recall lost per doubling)
MODELS = {
    "transformer": (1.0, ["attention"] * 4, False, 1.0, 0.02),
    "mamba": (0.0, ["mamba"] * 4, False, 0.9, 0.2),
    "mamba2": (0.0, ["mamba2"] * 4, False, 0.95, 0.15),
    "hybrid": (0.25, ["mamba2", "attention", "mamba2", "mamba2"], True, 0.95, 0.05),
}
FAILED = ("mamba2", 4096, 1.0)  # one cell of the sweep failed
RUN_ID = "20250101-120000-abcdef"


def _key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def n_correct(model: str, L: int, depth: float) -> int:
    _, _, _, top, drop = MODELS[model]
    p = max(0.0, top - drop * math.log2(L / 256) - (0.1 if depth == 0.5 else 0.0))
    return round(p * N)


def model_info(model: str) -> dict[str, Any]:
    frac, types, random, _, _ = MODELS[model]
    n_attn = types.count("attention")
    return {"params": 1_200_000 + 100_000 * len(model), "layer_types": types,
            "attn_layer_idx": [i for i, t in enumerate(types) if t == "attention"], "attention_fraction": frac,
            "kv_bytes_per_token": 2 * 2 * 64 * n_attn, "fixed_state_bytes": 2 * 16 * 128 * (len(types) - n_attn),
            "kind": "native", "random_weights": random}


def cell_row(model: str, L: int, depth: float, *, spec: str = "needle", run_id: str = RUN_ID,
             failed: bool = False) -> dict[str, Any]:
    k = n_correct(model, L, depth)
    lo, hi = wilson(k, N)
    return {
        "cell_key": _key(spec, model, L, depth), "sample_key": _key(spec, L, depth), "run_id": run_id,
        "status": "failed" if failed else "complete", "error": "CUDA out of memory" if failed else None,
        "spec": spec, "task": "needle", "model": model, "model_id": _key(model)[:16], "model_kind": "native",
        "random_weights": int(MODELS[model][2]), "format": "tokens", "context_length": L, "axes": {"depth": depth},
        "params": {"depth": depth}, "seed": 3, "n_samples": N, "scoring": "teacher_forced",
        "n_correct": None if failed else k, "accuracy": None if failed else k / N,
        "ci_low": None if failed else lo, "ci_high": None if failed else hi, "metrics": {},
        "model_info": model_info(model), "device": "cpu", "wall_s": 0.1, "tokens_per_s": 1e4,
        "finished_at": "2025-01-01T12:00:00+00:00",
    }


def records(cell: dict[str, Any]) -> list[Record]:
    if cell["status"] == "failed":
        return []
    return [Record(i, f"p{i}", f"t{i}", "<q> k", "v", "v", i < cell["n_correct"], {}) for i in range(N)]


def prefill_seconds(model: str, L: int) -> float:
    """Attention prefill ∝ L² (plus a linear part), SSM prefill ∝ L."""
    frac = MODELS[model][0]
    return (1.5e-4 if model == "mamba2" else 2e-4) * (L / 256) + frac * 3e-4 * (L / 256) ** 2


def cost_row(model: str, L: int, device_name: str = "NVIDIA H100 80GB HBM3") -> dict[str, Any]:
    info = model_info(model)
    return {
        "model_id": _key(model)[:16], "model": model, "device": "cuda", "device_name": device_name,
        "context_length": L, "batch": 1, "status": "ok", "error": None, "prefill_s": prefill_seconds(model, L),
        "prefill_tokens_per_s": L / prefill_seconds(model, L), "decode_s_per_token": 1e-3 * (1 + info["attention_fraction"] * L / 4096),
        "peak_mem_bytes": 10_000_000 + 1000 * L, "kv_cache_bytes": info["kv_bytes_per_token"] * L,
        "fixed_state_bytes": info["fixed_state_bytes"], "flops_per_token": 2 * info["params"] + 4 * 64 * L * info["attention_fraction"],
        "repeats": 5, "path": "reference", "model_info": info, "run_id": RUN_ID, "measured_at": "2025-01-01T12:30:00+00:00",
    }


def make_store(path: Path, *, costs: bool = True) -> Path:
    """A 4 models × 5 lengths × 5 depths needle sweep, one failed cell, one random-weight model."""
    store = Store(path, create=True)
    try:
        store.start_run({"run_id": RUN_ID, "started_at": "2025-01-01T12:00:00+00:00", "status": "running",
                         "command": "evalkit run tasks/needle.yaml --models transformer,mamba,mamba2,hybrid",
                         "git_commit": "0123456789abcdef0123", "evalkit_version": "0.1.0", "torch_version": "2.11.0",
                         "python_version": "3.11.9", "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "seed": 3,
                         "specs": {}})
        store.finish_run(RUN_ID, "failed", "2025-01-01T12:20:00+00:00")
        for model in MODELS:
            for L in LENGTHS:
                for d in DEPTHS:
                    c = cell_row(model, L, d, failed=(model, L, d) == FAILED)
                    store.write_cell(c, records(c))
                if costs:
                    store.write_cost(cost_row(model, L))
    finally:
        store.close()
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_store(tmp_path / "runs" / "evalkit.sqlite")


def _data(path: Path, **kw: Any):
    store = Store(path)
    try:
        return load_report(store, **kw)
    finally:
        store.close()


# ----------------------------------------------------------------------------------- data
def test_scaling_exponent_recovers_exact_power_laws():
    L = [256, 512, 1024, 2048, 4096]
    assert scaling_exponent(L, [3e-9 * x**2 for x in L]) == pytest.approx(2.0, abs=1e-9)
    assert scaling_exponent(L, [5e-6 * x for x in L]) == pytest.approx(1.0, abs=1e-9)
    assert scaling_exponent([1000, 2000], [1.0, 8.0]) == pytest.approx(3.0)
    assert scaling_exponent([1024], [0.1]) is None  # one length: no slope
    assert scaling_exponent([1024, 1024], [0.1, 0.2]) is None
    assert scaling_exponent([], []) is None


def test_pareto_front_keeps_undominated_points_by_cost():
    pts = [(1.0, 0.2), (2.0, 0.9), (3.0, 0.5), (0.5, 0.1), (4.0, 0.95), (2.0, 0.3)]
    assert pareto_front(pts) == [3, 0, 1, 4]


def test_report_data_pools_depth_with_wilson_effective_length_and_costs(sweep):
    d = _data(sweep, threshold=0.5)
    assert d.lengths == list(LENGTHS) and d.reference_length == 4096 and d.specs == ["needle"]
    assert d.random_models == ["hybrid"] and d.n_cells == 100 and d.n_failed == 1
    rows = {r.model: r for r in d.rows}
    assert len(d.rows) == 4 and all(r.axes == () for r in d.rows)
    k = sum(n_correct("mamba", 1024, dep) for dep in DEPTHS)
    r = rows["mamba"].recall[1024]
    assert (r.k, r.n) == (k, 5 * N) and r.ci == wilson(k, 5 * N)
    # the failed depth is left out of the pool, not counted as wrong
    assert rows["mamba2"].recall[4096].n == 4 * N
    # effective length: longest length with pooled recall ≥ threshold
    for row in rows.values():
        ok = [L for L in LENGTHS if row.recall[L].value >= 0.5]
        assert row.effective_length == max(ok)
    assert rows["transformer"].effective_length == 4096 and rows["mamba"].effective_length < 4096
    assert all(r.effective_length is None for r in _data(sweep, threshold=1.0).rows)  # nothing is perfect
    # heatmap: per depth × length, failed cell marked
    hm = d.heatmaps[("needle", "mamba2")]
    assert len(hm) == 25 and hm[(1.0, 4096)].failed and hm[(0.5, 256)].k == n_correct("mamba2", 256, 0.5)
    # costs on one device, exponents ≈ 2 for attention, 1 for SSMs
    assert d.cost_device == "NVIDIA H100 80GB HBM3"
    assert d.exponents["mamba"] == pytest.approx(1.0) and d.exponents["transformer"] > 1.8
    assert 1.0 < d.exponents["hybrid"] < d.exponents["transformer"]
    assert d.cost_at("mamba", "prefill_s") == pytest.approx(prefill_seconds("mamba", 4096))
    assert d.state_bytes_at_ref("transformer") == 2 * 2 * 64 * 4 * 4096
    ref = d.recall_at_ref[("needle", "transformer")]
    assert ref.n == 5 * N and ref.k == sum(n_correct("transformer", 4096, dep) for dep in DEPTHS)
    assert [r["run_id"] for r in d.runs] == [RUN_ID] and d.runs[0]["cells"] == 100 and d.runs[0]["seeds"] == [3]
    assert d.runs[0]["samples"] == 99 * N


def test_reference_length_must_be_stored(sweep):
    assert _data(sweep, reference_length=1024).reference_length == 1024
    with pytest.raises(EvalkitError, match="--reference-length 1000 is not a context length"):
        _data(sweep, reference_length=1000)


# ----------------------------------------------------------------------------------- html
def test_html_is_self_contained_small_and_complete(cli, sweep, tmp_path):
    out = tmp_path / "reports" / "leaderboard.html"
    code, stdout, err = cli("report", "--store", str(sweep), "-o", str(out))
    assert code == 0, err
    assert f"wrote {out}" in stdout
    html = out.read_text()
    assert out.stat().st_size < 2_000_000
    # offline: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html, re.IGNORECASE)
    assert not re.search(r"<script[^>]*\bsrc=", html, re.IGNORECASE) and "<link" not in html.lower()
    assert "@import" not in html and "url(http" not in html
    assert html.count("<svg") == html.count("</svg>") and html.count("<svg") >= 4 + 4  # + 4 heatmaps
    # every plot kind, one recall curve per task and one heatmap per model
    for kind in ("recall-vs-length", "needle-heatmap", "recall-vs-cost", "recall-vs-attention", "cost-vs-length"):
        assert f'data-plot="{kind}"' in html
    assert html.count('data-plot="needle-heatmap"') == 4 and 'data-plots="recall-vs-length needle-heatmap' in html
    assert NO_COST_DATA not in html
    # sortable leaderboard with numeric sort keys, random weights flagged, failed cells shown
    assert 'class="sortable" id="leaderboard-table"' in html and "data-selftest" in html
    table = html[html.index('id="leaderboard-table"'):html.index("</table>")]
    assert table.count("<tr") == 1 + 4 and table.count('data-sort="') >= 4 * 15
    assert "RANDOM WEIGHTS" in table and 'class="random"' in table
    assert 'class="failed">FAILED' not in table  # pooled over depth: the 4 other depths of mamba2 @4096 are fine
    assert "Pareto frontier" in html and "mamba: ∝ L^1.00" in html and "transformer: ∝ L^1.8" in html
    # provenance
    for text in (RUN_ID, "0123456789ab", "NVIDIA H100 80GB HBM3", "evalkit run tasks/needle.yaml"):
        assert text in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids of inlined SVGs must not collide"


def test_failed_row_and_no_cost_data(cli, tmp_path):
    path = tmp_path / "runs" / "evalkit.sqlite"
    store = Store(path, create=True)
    for L in (256, 512):
        c = cell_row("mamba", L, 0.5)
        store.write_cell(c, records(c))
    c = cell_row("transformer", 512, 0.5, failed=True)
    store.write_cell(c, records(c))
    store.close()
    out = tmp_path / "r.html"
    code, _, err = cli("report", "-d", str(path.parent), "-o", str(out))
    assert code == 0, err
    html = out.read_text()
    assert NO_COST_DATA in html and html.count(f'<div class="nodata">{NO_COST_DATA}') == 2
    assert 'data-plot="recall-vs-cost"' in html and 'data-plot="cost-vs-length"' in html
    assert 'class="failed">FAILED</span>' in html and "CUDA out of memory" in html
    assert "1 of 3 cells failed" in html


# ----------------------------------------------------------------------------------- markdown
def test_markdown_leaderboard(cli, sweep, tmp_path):
    code, md, err = cli("report", "--store", str(sweep), "--format", "markdown", "-o", "-", "--threshold", "0.8")
    assert code == 0, err
    lines = md.splitlines()
    header = next(l for l in lines if l.startswith("| task | model"))
    assert "| L=256 |" in header and "| eff. length | threshold |" in header and "prefill @4096" in header
    assert "recall ≥ 0.8 (--threshold)" in md
    body = [l for l in lines if l.startswith("| needle |")]
    assert len(body) == 4 and any("hybrid ⚠ RANDOM WEIGHTS" in l for l in body)
    k = sum(n_correct("transformer", 256, d) for d in DEPTHS)
    lo, hi = wilson(k, 5 * N)
    assert f"{k / (5 * N):.2f} [{lo:.2f}, {hi:.2f}] n=100" in next(l for l in body if "| transformer |" in l)
    assert RUN_ID in md
    out = tmp_path / "lb.md"
    assert cli("report", "--store", str(sweep), "--format", "markdown", "--threshold", "0.8", "-o", str(out))[0] == 0
    assert out.read_text() == md


# ----------------------------------------------------------------------------------- effective-length threshold
RULER_RECALL = {1024: 18, 2048: 16, 4096: 12}  # of N: 0.90, 0.80, 0.60


def _ruler_store(path: Path) -> Path:
    """One RULER NIAH spec (task ruler_niah) and one needle spec, one model, three lengths."""
    store = Store(path, create=True)
    for spec, task in (("niah_single_1", "ruler_niah"), ("needle", "needle")):
        for L, k in RULER_RECALL.items():
            c = {**cell_row("transformer", L, 0.5, spec=spec), "task": task, "axes": {}, "params": {},
                 "n_correct": k, "accuracy": k / N, "ci_low": wilson(k, N)[0], "ci_high": wilson(k, N)[1]}
            store.write_cell(c, [Record(i, f"p{i}", f"t{i}", "q", "v", "v", i < k, {}) for i in range(N)])
    store.close()
    return path


def test_ruler_rows_use_rulers_threshold_unless_one_is_given(tmp_path):
    from evalkit.report.data import DEFAULT_THRESHOLD, task_threshold
    from evalkit.tasks.ruler import RulerNiahTask

    assert RulerNiahTask.effective_length_threshold == 0.856 and task_threshold("ruler_niah") == 0.856
    assert task_threshold("needle") == DEFAULT_THRESHOLD == 0.5
    assert task_threshold("no_such_task") == DEFAULT_THRESHOLD  # a plugin no longer installed
    path = _ruler_store(tmp_path / "evalkit.sqlite")
    rows = {r.spec: r for r in _data(path).rows}
    # 0.90 ≥ 0.856 > 0.80: RULER's effective length is 1024; the needle row (0.5) keeps 4096
    assert (rows["niah_single_1"].threshold, rows["niah_single_1"].effective_length) == (0.856, 1024)
    assert (rows["needle"].threshold, rows["needle"].effective_length) == (0.5, 4096)
    # an explicit threshold is every row's
    rows = {r.spec: r for r in _data(path, threshold=0.7).rows}
    assert {(r.threshold, r.effective_length) for r in rows.values()} == {(0.7, 2048)}
    rows = {r.spec: r for r in _data(path, threshold=0.95).rows}
    assert all(r.effective_length is None for r in rows.values())


def test_report_shows_each_rows_threshold(cli, tmp_path):
    path = _ruler_store(tmp_path / "evalkit.sqlite")
    code, md, err = cli("report", "--store", str(path), "--format", "markdown", "-o", "-")
    assert code == 0, err
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith(("| niah", "| needle"))}
    assert "| 1024 | 0.856 |" in rows["niah_single_1"] and "| 4096 | 0.5 |" in rows["needle"]
    assert "niah_single_1: 0.856" in md and "RULER's NIAH uses 0.856" in md
    code, md, err = cli("report", "--store", str(path), "--format", "markdown", "-o", "-", "--threshold", "0.7")
    assert code == 0, err
    assert md.count("| 2048 | 0.7 |") == 2 and "recall ≥ 0.7 (--threshold)" in md
    out = tmp_path / "r.html"
    code, _, err = cli("report", "--store", str(path), "-o", str(out))
    assert code == 0, err
    html = out.read_text()
    table = html[html.index('id="leaderboard-table"'):html.index("</table>")]
    assert ">threshold</th>" in table and '<td data-sort="0.856">0.856</td>' in table
    assert '<td data-sort="0.5">0.5</td>' in table and '<td data-sort="1024">1024</td>' in table
    # 0.80 at 2048 does not pass RULER's threshold, but passes the needle row's 0.5
    assert table.count('class="pass">0.80<') == 1
    assert "threshold per task: 0.5/0.856" in html and "threshold 0.856" in html  # header line; plot's line
    meta = html[html.index('id="report-meta">') + len('id="report-meta">'):]
    assert '"threshold": null' in meta and '"niah_single_1/transformer": 0.856' in meta


# ----------------------------------------------------------------------------------- errors, atomicity
def test_empty_store_and_bad_input_exit_2_and_keep_the_old_report(cli, sweep, tmp_path):
    out = tmp_path / "keep.html"
    out.write_text("good old report")
    empty = tmp_path / "empty"
    Store.open_dir(empty, create=True).close()
    for args, needle in [
        (["-d", str(empty)], "has no complete cells to report"),
        (["-d", str(tmp_path / "nowhere")], "no results store at"),
        (["--store", str(sweep), "--reference-length", "1000"], "--reference-length 1000 is not a context length"),
        (["--store", str(sweep), "--threshold", "1.5"], "1.5 is not in the range"),
        (["--store", str(sweep), "--format", "pdf"], "'pdf' is not one of"),
    ]:
        code, _, err = cli("report", *args, "-o", str(out))
        assert code == 2 and needle in err, (args, err)
        assert out.read_text() == "good old report"
    # only failed cells: nothing complete to report
    only_failed = tmp_path / "failed" / "evalkit.sqlite"
    store = Store(only_failed, create=True)
    store.write_cell(cell_row("mamba", 256, 0.0, failed=True), [])
    store.close()
    code, _, err = cli("report", "--store", str(only_failed), "-o", str(out))
    assert code == 2 and "has no complete cells to report" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["keep.html"]


def test_write_atomic_never_leaves_a_half_file(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    write_atomic(target, "v1")
    assert target.read_text() == "v1" and oct(target.stat().st_mode & 0o777) == "0o644"

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("evalkit.report.data.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "v2" * 1000)
    assert target.read_text() == "v1" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_report_of_a_real_run(cli, tiny_models, tiny_task, tmp_path):
    """End to end: `evalkit run` on the debug-flavor models, then `evalkit report`."""
    out = tmp_path / "runs"
    models = f"{tiny_models['t-attn']},{tiny_models['t-mamba']}"
    code, _, err = cli("run", str(tiny_task), "--models", models, "-d", str(out))
    assert code == 0, err
    html_path = tmp_path / "lb.html"
    code, _, err = cli("report", "-d", str(out), "-o", str(html_path))
    assert code == 0, err
    html = html_path.read_text()
    assert "t-attn" in html and "t-mamba" in html and "RANDOM WEIGHTS" in html
    # `evalkit run` may or may not probe costs: either way both cost plots have their place
    assert html.count('data-plot="recall-vs-cost"') == 1 and html.count('data-plot="cost-vs-length"') == 1
    assert html.count('data-plot="needle-heatmap"') == 2
    conn = sqlite3.connect(out / "evalkit.sqlite")
    run_id = conn.execute("SELECT run_id FROM runs").fetchone()[0]
    conn.close()
    assert run_id in html
