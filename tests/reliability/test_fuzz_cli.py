"""Fuzzed command lines (run, report, export, show, cost, ls) against a real store: every command
either works (exit 0) or is refused with exit 2 and one sentence; never a traceback; a refused
command leaves the store and the file system as they were; a run that works stores whole cells."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_fuzz import Counter, fuzz_settings
from reliability_util import (
    TINY_MODELS,
    call_cli,
    error_sentence,
    files_of,
    logical_digest,
    tiny_task,
)

JUNK = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="0123456789"), max_size=6)
# paths are relative to the example's working directory (see the fixture); M1/M2 are tiny models
OUTPUTS = ["out", "fresh", "notes.txt", "", "/proc/evalkit-cannot-create"]
FILES = ["result.file", "-", "models", "/proc/evalkit-cannot/x.html", ""]


def _opt(name: str, values: list[str]) -> st.SearchStrategy:
    return st.tuples(st.just(name), st.one_of(st.sampled_from(values), JUNK)).map(list)


def _command(name: str, positional: st.SearchStrategy, options: list[st.SearchStrategy],
             flags: list[str]) -> st.SearchStrategy:
    return st.tuples(positional, st.lists(st.one_of(*options), max_size=5),
                     st.lists(st.sampled_from([*flags, "--bogus", "-z"]), max_size=2)).map(
        lambda t: [name, *t[0], *(x for pair in t[1] for x in pair), *t[2]])


MODELS = ["M1", "M1,M2", "hybird", "", ",", "missing.yaml", "M1,,M2", "tasks"]
RUN = _command(
    "run", st.lists(st.sampled_from(["TASK", "TASK", "nedle", "missing.yaml", "tasks", "FUZZ"]), max_size=2),
    [_opt("--models", MODELS), _opt("--models", MODELS),
     _opt("--lengths", ["64", "64,128", "128,64", "0", "-5", "", "64,,128", "99999999", "1e3", "8", "64,64"]),
     _opt("--samples", ["1", "2", "0", "-1", ""]), _opt("--seed", ["0", "7", "-1", "99999999999999999999"]),
     _opt("--device", ["cpu", "auto", "cuda", "tpu"]), _opt("--limit", ["1", "3", "0"]),
     _opt("--scoring", ["teacher_forced", "greedy", "beam"]), _opt("--output-dir", OUTPUTS),
     _opt("-d", OUTPUTS)],
    ["--overwrite", "--dry-run", "--no-cost", "--no-cost", "--no-cost"])
# near-valid runs: a good base with up to two fuzzed options, so that many examples really run
RUN_OPTIONS = [_opt("--lengths", ["64", "64,128", "128", "8", "0", "abc"]), _opt("--samples", ["1", "2", "0"]),
               _opt("--seed", ["0", "7"]), _opt("--limit", ["1", "3", "0"]), _opt("-d", OUTPUTS),
               _opt("--scoring", ["teacher_forced", "greedy", "beam"])]
NEAR_RUN = st.tuples(st.sampled_from(["M1", "M2", "M1,M2"]), st.lists(st.one_of(*RUN_OPTIONS), max_size=2),
                     st.lists(st.sampled_from(["--overwrite", "--dry-run"]), max_size=1)).map(
    lambda t: ["run", "TASK", "--models", t[0], "--no-cost", *(x for pair in t[1] for x in pair), *t[2]])
READ_STORE = [_opt("--output-dir", OUTPUTS), _opt("--store", ["out/evalkit.sqlite", "notes.txt", "missing.sqlite", ""])]
REPORT = _command("report", st.just([]), [*READ_STORE, _opt("--format", ["html", "markdown", "pdf"]),
                                          _opt("--threshold", ["0.5", "2", "-1"]), _opt("-o", FILES),
                                          _opt("--reference-length", ["64", "0", "100000"])], [])
EXPORT = _command("export", st.just([]), [*READ_STORE, _opt("--format", ["csv", "json", "xml"]),
                                          _opt("--level", ["samples", "cells", "runs"]), _opt("-o", FILES)], [])
SHOW = _command("show", st.lists(st.sampled_from(["0", "", "zz", "%", "_", "1", "a"]), min_size=1, max_size=2),
                [_opt("--n", ["1", "0", "3"]), _opt("-d", OUTPUTS)], [])
COST = _command("cost", st.lists(st.sampled_from(["M1", "hybird", "missing.yaml", ""]), min_size=1, max_size=1),
                [_opt("--lengths", ["64", "64,128", "0", "99999999"]), _opt("--repeats", ["1", "0"]),
                 _opt("--batch", ["1", "0", "2"]), _opt("--decode-tokens", ["1", "0"]), _opt("-d", OUTPUTS),
                 _opt("--device", ["cpu", "cuda"]),
                 _opt("--arch", ["d_model=64", "n_layers=1", "bogus=1", "=3", "novalue", "d_model=x",
                                 "attention_fraction=2", "d_model=[1, 2]", "d_model=: :", "flavor=[]"])],
                [])
LS = st.tuples(st.just("ls"), st.sampled_from(["tasks", "models", "zoo", ""])).map(list)
ARGV = st.one_of(NEAR_RUN, NEAR_RUN, RUN, RUN, REPORT, EXPORT, SHOW, COST, LS)


@pytest.fixture
def place(tmp_path: Path) -> Path:
    d = tmp_path / "w"
    models = TINY_MODELS["native"](d / "models")
    for i, m in enumerate(models, 1):
        shutil.copy(m, d / f"M{i}")
    shutil.copy(tiny_task(d / "tasks"), d / "TASK")
    (d / "FUZZ").write_text("task: needle\nlengths: [64]\nsamples: 1\nparams: {depth: [0.5, 1.5]}\n")
    (d / "notes.txt").write_text("not a store\n")
    code, _, err = call_cli(["run", str(d / "TASK"), "--models", str(d / "M1"), "-d", str(d / "out"),
                             "--device", "cpu", "--no-cost"])
    assert code == 0, err
    return d


def _whole_cells(out: Path) -> None:
    """Every complete cell in the store has all its records (no partial write)."""
    if not (out / "evalkit.sqlite").exists():
        return
    c = sqlite3.connect(f"file:{out / 'evalkit.sqlite'}?mode=ro", uri=True)
    try:
        bad = c.execute("SELECT c.cell_key FROM cells c LEFT JOIN records r ON r.cell_key = c.cell_key "
                        "WHERE c.status='complete' GROUP BY c.cell_key HAVING count(r.idx) != c.n_samples").fetchall()
    finally:
        c.close()
    assert not bad, f"complete cells without all their records: {bad}"


def test_fuzzed_command_lines_work_or_refuse_cleanly(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(place)
    seen = Counter()

    @fuzz_settings(0.3)
    @given(ARGV)
    def prop(argv: list[str]) -> None:
        if argv[0] == "run" and "--device" not in argv:
            argv += ["--device", "cpu"]
        Path("result.file").unlink(missing_ok=True)
        before = {d: (logical_digest(place / d), files_of(place / d)) for d in ("out", "fresh", "models")}
        top = {p.name for p in place.iterdir()}
        code, out, err = call_cli(argv)
        if code == 2:
            error_sentence(err)
            after = {d: (logical_digest(place / d), files_of(place / d)) for d in ("out", "fresh", "models")}
            assert after == before, f"refused `evalkit {' '.join(argv)}` changed stored files"
            new = {p.name for p in place.iterdir()} - top
            assert not new, f"refused `evalkit {' '.join(argv)}` created {sorted(new)}"
            seen.add(f"refused-{argv[0]}")
        else:
            assert code == 0, (argv, code, out, err)
            seen.add(f"ok-{argv[0]}")
        for d in ("out", "fresh"):
            _whole_cells(place / d)

    prop()
    seen.report("command lines")
    assert sum(v for k, v in seen.outcomes.items() if k.startswith("ok-")) > 0 and seen.n >= 10
