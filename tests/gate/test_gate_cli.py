"""`evalkit gate` end to end: synthetic stores with controlled per-sample outcomes (shared sample
keys, as the runner makes them) for the statistics, and real stores from tiny runs for the wiring."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import evalkit
from testutil import write
from evalkit.stats import wilson
from evalkit.store import Record, Store


def make_store(out: Path, model: str, cells: dict[tuple[str, int, float], list[bool]], model_id: str = "mid-1",
               finished_at: str = "2025-01-01T00:00:00+00:00") -> Path:
    """A store whose cell (spec, length, depth) has the given per-sample outcomes; the sample key
    depends only on (spec, length, depth), so two stores made here share samples."""
    store = Store.open_dir(out, create=True)
    try:
        for (spec, length, depth), correct in cells.items():
            skey = f"{spec}-{length}-{depth}"
            k = sum(correct)
            lo, hi = wilson(k, len(correct))
            store.write_cell({
                "cell_key": f"{model_id}-{skey}", "sample_key": skey, "run_id": "r1", "status": "complete",
                "spec": spec, "task": "needle", "model": model, "model_id": model_id, "model_kind": "native",
                "random_weights": 0, "format": "tokens", "context_length": length, "axes": {"depth": depth},
                "params": {"depth": depth}, "seed": 0, "n_samples": len(correct), "scoring": "teacher_forced",
                "n_correct": k, "accuracy": k / len(correct), "ci_low": lo, "ci_high": hi, "metrics": {},
                "model_info": {}, "finished_at": finished_at,
            }, [Record(i, f"p{i}", f"t{i}", "", "x", "y", ok, {}) for i, ok in enumerate(correct)])
    finally:
        store.close()
    return out


def outcomes(n: int, right: int) -> list[bool]:
    return [i < right for i in range(n)]


def flip(base: list[bool], right_to_wrong: int, wrong_to_right: int) -> list[bool]:
    """Candidate outcomes: the first ``right_to_wrong`` correct samples become wrong, and the
    first ``wrong_to_right`` wrong ones become right (b and c of McNemar, exactly)."""
    out = list(base)
    rights = [i for i, ok in enumerate(base) if ok]
    wrongs = [i for i, ok in enumerate(base) if not ok]
    for i in rights[:right_to_wrong]:
        out[i] = False
    for i in wrongs[:wrong_to_right]:
        out[i] = True
    return out


REGRESSION_GATE = """\
model: hybrid
store: {cand}
baseline: {{store: {base}}}
checks:
  - task: needle
    no_regression: true
"""


def test_noise_level_drop_passes_and_real_drop_fails(cli, tmp_path):
    base = outcomes(100, 90)
    make_store(tmp_path / "base", "hybrid", {("needle", 256, 0.5): base, ("needle", 1024, 0.5): base})
    # L=256: 4 right→wrong, 1 wrong→right: −3 points, beyond the tolerance but inside the noise
    # L=1024: 40 right→wrong, none back: −40 points, p = 2^-39
    make_store(tmp_path / "cand", "hybrid", {("needle", 256, 0.5): flip(base, 4, 1), ("needle", 1024, 0.5): flip(base, 40, 0)})
    gate = write(tmp_path / "g.yaml", REGRESSION_GATE.format(cand=tmp_path / "cand", base=tmp_path / "base"))
    code, out, err = cli("gate", str(gate), "--junit", str(tmp_path / "j.xml"), "--markdown", str(tmp_path / "s.md"))
    assert code == 1, err
    assert "FAIL: 1 of 2 checks failed" in out
    md = (tmp_path / "s.md").read_text()
    row256 = next(l for l in md.splitlines() if "L=256 depth=0.5" in l)
    row1024 = next(l for l in md.splitlines() if "L=1024 depth=0.5" in l)
    assert row256.startswith("| pass |") and "0.900 → 0.870 (-3.0 pts, n=100)" in row256
    assert "b=4 c=1, McNemar p=0.375, Holm p=0.375 (drop within noise)" in row256
    assert row1024.startswith("| **FAIL** |") and "0.900 → 0.500 (-40.0 pts, n=100)" in row1024
    assert "b=40 c=0, McNemar p=1.82e-12, Holm p=3.64e-12" in row1024  # 2^-39, ×2 by Holm
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["no_regression L=1024 depth=0.5"]

    # only the noise-level cell: the gate passes
    make_store(tmp_path / "cand2", "hybrid", {("needle", 256, 0.5): flip(base, 4, 1), ("needle", 1024, 0.5): base})
    gate2 = write(tmp_path / "g2.yaml", REGRESSION_GATE.format(cand=tmp_path / "cand2", base=tmp_path / "base"))
    code, out, err = cli("gate", str(gate2))
    assert code == 0 and "PASS: all 2 checks passed" in out, err


def test_significant_drop_within_tolerance_passes_and_holm_counts_every_cell(cli, tmp_path):
    base = outcomes(1000, 900)
    small = outcomes(30, 20)
    make_store(tmp_path / "base", "old", {("needle", 256, 0.0): base, ("needle", 256, 0.5): small, ("needle", 256, 1.0): small})
    # 15 flips of 1000 one way: p = 2^-14, highly significant, but only a 1.5-point drop
    make_store(tmp_path / "base", "new", {("needle", 256, 0.0): flip(base, 15, 0), ("needle", 256, 0.5): flip(small, 6, 0),
                                          ("needle", 256, 1.0): flip(small, 6, 0)}, model_id="mid-2")
    gate = write(tmp_path / "g.yaml", "model: new\nbaseline: {model: old}\nchecks:\n  - task: needle\n    no_regression: true\n")
    code, out, err = cli("gate", str(gate), "-d", str(tmp_path / "base"), "--markdown", str(tmp_path / "s.md"))
    md = (tmp_path / "s.md").read_text()
    assert code == 0, out + err
    assert "b=15 c=0, McNemar p=6.1e-05, Holm p=0.000183" in md  # significant, drop 1.5 ≤ 2 points: pass
    # depths 0.5 and 1.0: 6 of 30 flip one way, −20 points, p = 2/64 = 0.03125 < α on its own, but
    # Holm over the 3 cells gives max(3·6.1e-5, 2·0.03125) = 0.0625 ≥ α: not significant, pass
    assert md.count("b=6 c=0, McNemar p=0.0312, Holm p=0.0625 (drop within noise)") == 2
    # unit: length pools the depths into one test: b=27, c=0 over n=1060 → a 2.5-point drop, significant
    gate = write(tmp_path / "g2.yaml", "model: new\nbaseline: {model: old}\ntolerance: 0.02\n"
                                       "checks:\n  - task: needle\n    no_regression: true\n    unit: length\n")
    code, out, _ = cli("gate", str(gate), "-d", str(tmp_path / "base"), "--markdown", str(tmp_path / "s.md"))
    md = (tmp_path / "s.md").read_text()
    assert code == 1 and "| **FAIL** | no_regression | needle | L=256 |" in md and "n=1060" in md and "b=27 c=0" in md


def test_min_recall_uses_the_wilson_lower_bound_unless_point(cli, tmp_path):
    make_store(tmp_path / "s", "hybrid", {("needle", 256, 0.0): outcomes(10, 9), ("needle", 256, 1.0): outcomes(10, 9),
                                          ("needle", 512, 0.0): outcomes(100, 100), ("needle", 512, 1.0): outcomes(100, 100)})
    text = "model: hybrid\nchecks:\n  - task: needle\n    min_recall: 0.8\n"
    code, out, _ = cli("gate", str(write(tmp_path / "g.yaml", text)), "--store", str(tmp_path / "s" / "evalkit.sqlite"),
                       "--markdown", str(tmp_path / "m.md"))
    md = (tmp_path / "m.md").read_text()
    lo256 = wilson(18, 20)[0]
    assert lo256 == pytest.approx(0.6990, abs=1e-4)  # 18/20 = 0.9, but the lower bound is below 0.8
    assert code == 1 and "FAIL: 1 of 2 checks failed" in out
    assert f"| **FAIL** | min_recall | needle | L=256 | {lo256:.3f} (recall 18/20 = 0.900) | Wilson lower ≥ 0.8 |" in md
    assert f"| pass | min_recall | needle | L=512 | {wilson(200, 200)[0]:.3f} (recall 200/200 = 1.000) |" in md
    code, out, _ = cli("gate", str(write(tmp_path / "g2.yaml", text + "    bound: point\n")), "-d", str(tmp_path / "s"))
    assert code == 0 and "PASS: all 2 checks passed" in out


def test_effective_length_is_the_longest_prefix_above_threshold(cli, tmp_path):
    recalls = {256: 20, 512: 18, 1024: 6, 2048: 20}  # of 20; 1024 breaks the run, 2048 does not count
    make_store(tmp_path / "s", "hybrid", {("needle", L, 0.5): outcomes(20, k) for L, k in recalls.items()})

    def gate(minimum: int) -> tuple[int, str, str]:
        text = f"model: hybrid\nchecks:\n  - task: needle\n    min_effective_length: {minimum}\n    threshold: 0.5\n"
        return cli("gate", str(write(tmp_path / "g.yaml", text)), "-d", str(tmp_path / "s"), "--markdown", str(tmp_path / "m.md"))

    code, _, _ = gate(512)
    md = (tmp_path / "m.md").read_text()
    assert code == 0 and "| pass | min_effective_length | needle | L=256…2048 | 512 |" in md
    assert f"L=1024: Wilson lower {wilson(6, 20)[0]:.3f} (6/20) < 0.5" in md
    code, _, _ = gate(1024)
    assert code == 1 and "| **FAIL** | min_effective_length | needle | L=256…2048 | 512 | ≥ 1024" in (tmp_path / "m.md").read_text()
    code, _, err = gate(4096)
    assert code == 2 and "g.yaml:4: field 'checks.0.min_effective_length'" in err and "longest: 2048" in err


def test_step_summary_is_appended_when_set(cli, tmp_path, monkeypatch):
    make_store(tmp_path / "s", "hybrid", {("needle", 256, 0.0): outcomes(50, 10)})
    summary = write(tmp_path / "summary.md", "## earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    gate = write(tmp_path / "g.yaml", "model: hybrid\nchecks: [{task: needle, min_recall: 0.5}]\n")
    code, out, _ = cli("gate", str(gate), "-d", str(tmp_path / "s"))
    text = summary.read_text()
    assert code == 1 and text.startswith("## earlier step\n") and "❌ FAIL" in text and "| **FAIL** | min_recall |" in text
    assert f"wrote {summary}" in out
    cli("gate", str(gate), "-d", str(tmp_path / "s"))
    assert summary.read_text().count("### evalkit gate") == 2  # appended, never overwritten
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    code, out, _ = cli("gate", str(gate), "-d", str(tmp_path / "s"))
    assert code == 1 and "wrote" not in out and summary.read_text().count("### evalkit gate") == 2


def test_newest_model_identity_is_gated(cli, tmp_path):
    make_store(tmp_path / "s", "hybrid", {("needle", 256, 0.0): outcomes(50, 50)}, model_id="old", finished_at="2025-01-01T00:00:00+00:00")
    make_store(tmp_path / "s", "hybrid", {("needle", 256, 0.0): outcomes(50, 5)}, model_id="new", finished_at="2025-02-01T00:00:00+00:00")
    gate = write(tmp_path / "g.yaml", "model: hybrid\nchecks: [{task: needle, min_recall: 0.5}]\n")
    code, out, _ = cli("gate", str(gate), "-d", str(tmp_path / "s"), "--markdown", str(tmp_path / "m.md"))
    md = (tmp_path / "m.md").read_text()
    assert code == 1 and "recall 5/50" in md and "model_id new, newest of 2 identities" in md


@pytest.mark.parametrize("gate_text,needle,where", [
    ("model: hybrid\nchecks:\n  - task: neddle\n    min_recall: 0.5\n",
     "task 'neddle' was never run for model 'hybrid'", ":3: field 'checks.0.task'"),
    ("model: hybrid\nchecks:\n  - task: needle\n    lengths: [256, 8192]\n    min_recall: 0.5\n",
     "needle at length 8192: it was never run for model 'hybrid'", ":4: field 'checks.0.lengths.1'"),
    ("model: hybird\nchecks: [{task: needle, min_recall: 0.5}]\n",
     "candidate model 'hybird' has no complete cells", ":1: field 'model'"),
    ("model: hybrid\nbaseline: {model: prev}\nchecks: [{task: needle, no_regression: true}]\n",
     "baseline model 'prev' has no complete cells", ":2: field 'baseline.model'"),
    ("model: hybrid\nbaseline: {model: hybrid}\nchecks: [{task: needle, no_regression: true}]\n",
     "the baseline is the candidate itself", ":2: field 'baseline'"),
    ("model: hybrid\nbaseline: {model: other}\nchecks: [{task: needle, no_regression: true}]\n",
     "baseline 'other' in", ":3: field 'checks.0.no_regression'"),
])
def test_gate_file_that_does_not_match_the_store_exits_2(cli, tmp_path, gate_text, needle, where):
    make_store(tmp_path / "s", "hybrid", {("needle", 256, 0.0): outcomes(10, 9), ("needle", 512, 0.0): outcomes(10, 9)})
    make_store(tmp_path / "s", "other", {("needle", 256, 0.0): outcomes(10, 9)}, model_id="mid-o")  # lacks L=512
    gate = write(tmp_path / "g.yaml", gate_text)
    code, out, err = cli("gate", str(gate), "-d", str(tmp_path / "s"))
    assert code == 2 and needle in err and f"{gate}{where}" in err, err
    assert "PASS" not in out and "Traceback" not in err
    if "neddle" in gate_text:
        assert "did you mean 'needle'" in err
    if "8192" in gate_text:
        assert "complete lengths: 256, 512" in err


def test_empty_or_missing_store_exits_2(cli, tmp_path):
    gate = write(tmp_path / "g.yaml", "model: hybrid\nchecks: [{task: needle, min_recall: 0.5}]\n")
    Store.open_dir(tmp_path / "empty", create=True).close()
    code, out, err = cli("gate", str(gate), "-d", str(tmp_path / "empty"))
    assert code == 2 and "holds no complete cells (an empty store" in err and "PASS" not in out
    code, _, err = cli("gate", str(gate), "-d", str(tmp_path / "missing"))
    assert code == 2 and "no results store at" in err
    assert not (tmp_path / "missing").exists()  # the gate never creates a store


def test_gate_on_real_runs(cli, tiny_models, tiny_task, tmp_path):
    """Two real models run on the same task spec share sample keys, so they pair sample by sample."""
    out = tmp_path / "runs"
    evalkit.run(str(tiny_task), models=[str(tiny_models["t-attn"]), str(tiny_models["t-mamba"])], output_dir=out)
    before = sqlite3.connect(out / "evalkit.sqlite").execute("SELECT count(*) FROM records").fetchone()[0]
    gate = write(tmp_path / "g.yaml", """\
model: t-mamba
baseline: {model: t-attn}
tolerance: 0.5
checks:
  - task: tiny_needle
    no_regression: true
  - task: tiny_needle
    lengths: [128]
    no_regression: true
    unit: length
  - task: tiny_needle
    min_recall: 0.0
""")
    code, stdout, err = cli("gate", str(gate), "-d", str(out), "--junit", str(tmp_path / "j.xml"))
    assert code == 0, stdout + err  # a drop beyond 50 points of 4 samples is impossible here
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    names = [c.get("name") for c in suite.iter("testcase")]
    assert names == ["no_regression L=64 depth=0.0", "no_regression L=64 depth=1.0", "no_regression L=128 depth=0.0",
                     "no_regression L=128 depth=1.0", "no_regression L=128", "min_recall L=64", "min_recall L=128"]
    assert suite.get("failures") == "0" and "RANDOM WEIGHTS" in stdout
    df = evalkit.load(out)
    recall = df[(df.model == "t-mamba") & (df.context_length == 64)]["correct"].sum()
    strict = write(tmp_path / "g2.yaml", "model: t-mamba\nchecks: [{task: tiny_needle, min_recall: 0.99}]\n")
    code, stdout, _ = cli("gate", str(strict), "-d", str(out), "--markdown", str(tmp_path / "m.md"))
    assert code == 1 and f"(recall {recall}/8 = " in (tmp_path / "m.md").read_text()  # 8 = 2 depths × 4 samples pooled
    after = sqlite3.connect(out / "evalkit.sqlite").execute("SELECT count(*) FROM records").fetchone()[0]
    assert after == before  # the gate only reads


def test_underpowered_units_get_a_note(cli, tmp_path):
    base = outcomes(4, 4)
    make_store(tmp_path / "s", "old", {("needle", 64, d): base for d in (0.0, 1.0)})
    make_store(tmp_path / "s", "new", {("needle", 64, d): flip(base, 4, 0) for d in (0.0, 1.0)}, model_id="mid-2")
    gate = write(tmp_path / "g.yaml", "model: new\nbaseline: {model: old}\nchecks: [{task: needle, no_regression: true}]\n")
    code, _, _ = cli("gate", str(gate), "-d", str(tmp_path / "s"), "--markdown", str(tmp_path / "m.md"))
    md = (tmp_path / "m.md").read_text()
    # every sample lost (−100 points), yet 2 · 2^-4 = 0.125 ≥ α: it cannot fail, and the gate says why
    assert code == 0 and md.count("b=4 c=0, McNemar p=0.125, Holm p=0.25 (drop within noise)") == 2
    assert "2 of 2 tested units have so few paired samples (n ≤ 4)" in md and "unit: length" in md
