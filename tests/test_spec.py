"""Spec validation: each bad input gets one sentence naming file, line, field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.errors import SpecError, UnknownNameError
from evalkit.spec import builtin_dir, builtin_names, load_model_spec, load_task_spec
from testutil import write


def test_builtin_specs_load_and_resolve_by_name():
    assert {"needle", "assoc_recall", "copy_number", "multi_query"} <= set(builtin_names("tasks"))
    assert {"transformer", "mamba", "mamba2", "hybrid"} <= set(builtin_names("models"))
    spec = load_task_spec("needle")
    assert spec.task == "needle" and Path(spec.path) == builtin_dir("tasks") / "needle.yaml"
    assert dict(spec.sweep)["depth"] == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(spec.points()) == 5
    assert load_task_spec("tasks/needle.yaml").lengths == spec.lengths  # same file by path
    m = load_model_spec("hybrid")
    assert m.kind == "native" and m.arch_dict()["attention_fraction"] == 0.25


BAD_TASKS = [
    ("task: needle\nlenghts: [64]\n", 2, "field 'lenghts': unknown field; did you mean 'lengths'?"),
    ("task: needel\n", 1, "unknown task 'needel'; did you mean 'needle'?"),
    ("task: needle\nparams:\n  dept: 0.5\n", 3, "field 'params.dept': unknown field; did you mean 'depth'?"),
    ("task: needle\nparams:\n  depth: 1.5\n", 3, "depth"),
    ("task: needle\nparams:\n  key_len: [1, 2]\n", 3, "is not a sweep axis of task 'needle'"),
    ("task: needle\nparams:\n  key_len: two\n", 3, "expected int, got 'two'"),
    ("task: needle\nlengths: [64, -3]\n", 2, "field 'lengths.1': expected a positive integer, got -3"),
    ("task: needle\nsamples: 0\n", 2, "field 'samples': expected a positive integer"),
    ("task: needle\nfiller: rndom\n", 2, "unknown filler 'rndom'; did you mean 'random'?"),
    ("task: needle\nformat: tokns\n", 2, "unknown format 'tokns'; did you mean 'tokens'?"),
    ("task: needle\ntask: needle\n", 2, "duplicate field 'task'"),
    ("task: needle\nparams: [1\n", 3, "malformed YAML"),
    ("- a\n- b\n", None, "expected a mapping of fields at the top level"),
    ("lengths: [64]\n", 1, "missing required field 'task'"),
]


@pytest.mark.parametrize("text,line,needle", BAD_TASKS, ids=[b[2][:30] for b in BAD_TASKS])
def test_task_spec_errors_name_file_line_and_field(tmp_path: Path, text: str, line: int | None, needle: str):
    p = write(tmp_path / "bad.yaml", text)
    with pytest.raises(SpecError) as e:
        load_task_spec(str(p))
    msg = str(e.value)
    assert needle in msg
    assert msg.startswith(f"{p}:{line}:" if line else f"{p}:")
    assert "\n" not in msg


BAD_MODELS = [
    ("kind: native\narch: {flavor: debug, dmodel: 64}\n", 2, "unknown field 'dmodel'; did you mean 'd_model'?"),
    ("kind: nativ\n", 1, "unknown adapter 'nativ'; did you mean 'native'?"),
    ("kind: native\narch: {attention_fraction: 2.0}\n", 2, "attention_fraction"),
    ("kind: native\ncheckpoint: nowhere/x.safetensors\n", 2, "does not exist"),
    ("kind: native\ninit_sed: 1\n", 2, "did you mean 'init_seed'?"),
]


@pytest.mark.parametrize("text,line,needle", BAD_MODELS, ids=[b[2][:30] for b in BAD_MODELS])
def test_model_spec_errors(tmp_path: Path, text: str, line: int, needle: str):
    p = write(tmp_path / "m.yaml", text)
    with pytest.raises(SpecError) as e:
        load_model_spec(str(p))
    assert needle in str(e.value) and str(e.value).startswith(f"{p}:{line}:")


def test_unknown_names_suggest_closest():
    with pytest.raises(UnknownNameError, match="unknown model 'hybird'; did you mean 'hybrid'"):
        load_model_spec("hybird")
    with pytest.raises(UnknownNameError, match="unknown task 'nedle'; did you mean 'needle'"):
        load_task_spec("nedle")
    with pytest.raises(UnknownNameError, match="does not exist"):
        load_task_spec("no/such/file.yaml")
