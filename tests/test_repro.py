"""scripts/repro.py and experiments/repro/grid.py: the round-5 grid, its task specs, and the
round-5 section of the frontier write-up read from the committed store."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def repro():
    return _load("repro_script", ROOT / "scripts" / "repro.py")


def test_round5_grid_and_task_specs(repro):
    from evalkit.spec import load_task_spec

    g = repro._grid()
    runs = g.EXPERIMENTS["frontier5"]()
    assert len(runs) == 24 and len({r.name for r in runs}) == 24
    assert {r.seed for r in runs} == {0, 1, 2}
    assert all(r.train["batch_tokens"] == 256 * 256 for r in runs)
    assert len(g.EXPERIMENTS["zoo5"]()) == 27
    for t in ("mqar_128_8_zoo", "mqar_256_t4_zoo"):
        spec = load_task_spec(str(ROOT / "experiments" / "repro" / "tasks" / f"{t}.yaml"))
        assert (spec.answers, spec.queries) == ("hidden", "bare")


DATA = ROOT / "reports" / "repro" / "data" / "frontier5"


@pytest.mark.skipif(not (DATA / "evalkit.sqlite.xz").is_file(), reason="round 5 not collected")
def test_round5_section_from_the_store(repro):
    import json

    runs = json.loads((DATA / "runs.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        db = repro._unpacked(DATA / "evalkit.sqlite.xz", Path(tmp))
        cells = repro._cells(db)
        lines = repro._round5(runs, cells, db, {"mamba2 N=256": 271360})
        name = next(n for n, i in runs.items() if i["label"] == "mamba2 N=64" and n.endswith("-s0"))
        dist = repro._by_distance(db, "experiments/repro/tasks/mqar_256_t4_zoo.yaml", 256, [name])[name]
    text = "\n".join(lines)
    assert "## Round 5" in text
    # the N = 256 runs (re-run after the SSD kernel fix, evaluated in a second call) have results, in their
    # place by state bytes (after attention's 262,144), and the setting names the later call
    assert all(i.get("steps") for i in runs.values())
    rows = [line.split(" | ")[0][2:] for line in lines if line.startswith("| ") and line.count(" | ") == 7]
    assert rows[-2:] == ["attention", "mamba2 N=256"]
    assert "| mamba2 N=256 | 271,360 | 0.01 | 1.00 (1.00–1.00) |" in text
    assert "21 runs trained together" in text and "3 (mamba2 N=256) trained later" in text
    assert "crashed" not in text
    # every run has a row
    assert sum(line.count(" | s") for line in lines if line.startswith("| ")) >= len(runs)
    # the by-distance split averages back to the cell's per-query accuracy (here ≈ 1.0 everywhere)
    assert len(dist) == len(repro.DISTANCES) - 1 and all(v is not None and 0 <= v <= 1 for v in dist)
    q = next(c for c in cells if c["model"] == name)["metrics"]["query_acc"]["mean"]
    assert min(dist) <= q + 1e-9 and max(dist) >= q - 1e-9
