"""Fuzzed gate files through `evalkit gate`: exit 0 (pass), 1 (fail) or 2 (bad input, one sentence);
never a traceback; the stores are never written; --junit / --markdown files appear only when the
gate really ran (exit 0 or 1), and then they are whole."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_fuzz import (
    VALUES,
    Counter,
    fuzz_settings,
    mapping,
    yaml_text,
)
from reliability_util import (
    TINY_MODELS,
    call_cli,
    error_sentence,
    logical_digest,
    tiny_task,
)

TOP = ("model", "store", "baseline", "alpha", "tolerance", "bound", "checks", "description")
CHECK = ("task", "lengths", "min_recall", "min_effective_length", "no_regression", "threshold", "bound",
         "tolerance", "unit", "name")
FRACTIONS = st.sampled_from([0.0, 0.05, 0.5, 0.9, 1.0, 1.5, 80, -0.1, True])
# store references: the real store (dir or file), a missing one, an empty file, a text file, a dir
STORES = st.sampled_from(["out", "out/evalkit.sqlite", "missing", "empty.sqlite", "notes.txt", "models", None])


def _check_docs() -> st.SearchStrategy:
    """Mostly well-formed checks (one kind each, with the modifiers that kind takes), some junk."""
    good = st.sampled_from([0.0, 0.05, 0.5, 0.9, 1.0])
    kind_values = {"min_recall": good, "min_effective_length": st.sampled_from([1, 64, 128]),
                   "no_regression": st.just(True)}
    modifiers = {"min_recall": {"bound": st.sampled_from(["wilson_lower", "point"])},
                 "min_effective_length": {"threshold": good, "bound": st.sampled_from(["wilson_lower", "point"])},
                 "no_regression": {"tolerance": good, "unit": st.sampled_from(["cell", "length"])}}

    lengths = st.lists(st.sampled_from([64, 128]), min_size=1, max_size=2)

    def one(kind: str) -> st.SearchStrategy:
        return st.fixed_dictionaries({"task": st.sampled_from(["r-needle", "r-needle", "r-needel"]),
                                      kind: kind_values[kind]},
                                     optional={"lengths": lengths, **modifiers[kind]})

    return st.one_of(st.sampled_from(list(kind_values)).flatmap(one), mapping(CHECK, max_size=4))


JUNK_GATE_DOCS = st.one_of(
    mapping(TOP, {"model": st.sampled_from(["r-hybrid", "r-attn", "r-hybird"]), "store": STORES,
                  "checks": st.lists(_check_docs(), max_size=3), "alpha": FRACTIONS, "tolerance": FRACTIONS}),
    st.fixed_dictionaries({"model": st.sampled_from(["r-hybrid", "r-attn"]),
                           "checks": st.lists(_check_docs(), min_size=1, max_size=3)}, optional={
        "baseline": st.one_of(st.fixed_dictionaries({"model": st.sampled_from(["r-attn", "r-hybrid", "nobody"])},
                                                    optional={"store": STORES}), VALUES),
        "alpha": FRACTIONS, "tolerance": FRACTIONS, "bound": st.sampled_from(["wilson_lower", "point", "x"]),
        "store": STORES}),
)
GATE_DOCS = st.one_of(JUNK_GATE_DOCS, st.fixed_dictionaries({"model": st.sampled_from(["r-hybrid", "r-attn"]),
                                                             "checks": st.lists(_check_docs(), min_size=1, max_size=2)},
                                                            optional={"baseline": st.fixed_dictionaries(
                                                                {"model": st.sampled_from(["r-attn", "r-hybrid"])})}))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gatefuzz")
    models = TINY_MODELS["native"](d / "models")
    task = tiny_task(d / "tasks")
    code, _, err = call_cli(["run", str(task), "--models", ",".join(map(str, models)), "-d", str(d / "out"),
                             "--device", "cpu", "--no-cost"])
    assert code == 0, err
    (d / "empty.sqlite").write_bytes(b"")
    (d / "notes.txt").write_text("not a store\n")
    return d


def test_fuzzed_gate_files_pass_fail_or_refuse_cleanly(stores: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "g"
    shutil.copytree(stores, d)
    monkeypatch.chdir(d)  # relative store paths in the gate files resolve here
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    gate, junit, md = d / "gate.yaml", d / "junit.xml", d / "gate.md"
    before = (logical_digest(d / "out"), (d / "empty.sqlite").read_bytes(), (d / "notes.txt").read_bytes())
    seen = Counter()

    @fuzz_settings()
    @given(yaml_text(GATE_DOCS), st.sampled_from([True, True, True, False]))
    def prop(text: str, with_dir: bool) -> None:
        gate.write_text(text)
        for f in (junit, md):
            f.unlink(missing_ok=True)
        code, _, err = call_cli(["gate", str(gate), *(["-d", "out"] if with_dir else []), "--junit", str(junit),
                                 "--markdown", str(md)])
        if code == 2:
            error_sentence(err)
            assert not junit.exists() and not md.exists(), "outputs written for a refused gate"
            seen.add("refused")
        else:
            assert code in (0, 1), (code, err)
            assert ET.parse(junit).getroot().tag == "testsuites" and md.read_text().startswith("### evalkit gate")
            seen.add("pass" if code == 0 else "fail")
        assert (logical_digest(d / "out"), (d / "empty.sqlite").read_bytes(), (d / "notes.txt").read_bytes()) == before

    prop()
    seen.report("gate files")
    assert seen.outcomes.get("pass", 0) + seen.outcomes.get("fail", 0) > 0 and seen.n >= 10
