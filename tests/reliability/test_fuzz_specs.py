"""Fuzzed task and model specs: every document either loads (and then plans, and a loaded native
model builds) or is refused with one EvalkitError sentence naming the file; never another
exception. The CLI side (exit code 2, nothing written) is in test_fuzz_cli.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reliability_fuzz import (
    VALUES,
    Counter,
    fuzz_settings,
    ints_or_junk,
    mapping,
    yaml_text,
)
from reliability_util import TINY_MODELS, store_rows, tiny_task

from evalkit.errors import EvalkitError
from evalkit.models import ADAPTERS
from evalkit.models.native.config import FLAVORS, NativeConfig
from evalkit.spec import FILLERS, load_model_spec, load_task_spec
from evalkit.tasks import FORMATS, TASKS

TASK_FIELDS = ("task", "name", "format", "filler", "lengths", "samples", "seed", "params", "description")
PARAM_NAMES = sorted({f.name for name in TASKS.names() for f in dataclasses.fields(TASKS.get(name).Params)})
PARAM_VALUES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 0.0, 0.25, 0.5, 1.0, True, "a"]),
                         st.lists(st.sampled_from([0, 1, 2, 4, 0.0, 0.5, 1.0]), max_size=3))

JUNK_TASK_DOCS = mapping(TASK_FIELDS, {
    "task": st.sampled_from([*TASKS.names(), "nedle", ""]),
    "format": st.sampled_from([*FORMATS.names(), "tokenz"]),
    "filler": st.sampled_from([*FILLERS, "randm"]),
    "lengths": ints_or_junk([8, 16, 64, 128, 256, 0, -1, 100_000]),
    "samples": ints_or_junk([1, 2, 0, -1]),
    "seed": st.integers(-5, 5),
    "params": mapping(PARAM_NAMES, dict.fromkeys(PARAM_NAMES, PARAM_VALUES), max_size=5),
})

# near-valid documents with 0-2 fields replaced by fuzz, so that most examples reach the deeper checks
NEAR_TASK_DOCS = st.fixed_dictionaries({"task": st.sampled_from(TASKS.names())}, optional={
    "lengths": st.lists(st.sampled_from([16, 32, 64, 128, 256]), min_size=1, max_size=2),
    "samples": st.integers(1, 3), "seed": st.integers(0, 3), "filler": st.sampled_from(FILLERS),
    "params": mapping(PARAM_NAMES, dict.fromkeys(PARAM_NAMES, PARAM_VALUES), max_size=3)})
TASK_DOCS = st.one_of(JUNK_TASK_DOCS, st.tuples(NEAR_TASK_DOCS, mapping(TASK_FIELDS, max_size=2)).map(
    lambda ab: {**ab[0], **ab[1]}), NEAR_TASK_DOCS)

ARCH_NAMES = ["flavor", *(f.name for f in dataclasses.fields(NativeConfig))]
ARCH_VALUES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 64, 0.0, 0.5, 1.0, -1, True, None,
                                         "mamba", "mamba2", "attention", "dispersed", "end", *FLAVORS]),
                        st.lists(st.sampled_from([0, 1, 2, 5, "attention", "mamba2"]), max_size=4))
JUNK_MODEL_DOCS = mapping(("name", "kind", "arch", "checkpoint", "init_seed", "description"), {
    "kind": st.sampled_from([*ADAPTERS.names(), "natve"]),
    "arch": mapping(ARCH_NAMES, dict.fromkeys(ARCH_NAMES, ARCH_VALUES), max_size=6),
    "checkpoint": st.sampled_from([None, "nope", ".", "ckpt", "ckpt/model.safetensors"]),
    "init_seed": st.integers(-2, 2),
})
NEAR_MODEL_DOCS = st.fixed_dictionaries({"kind": st.just("native"), "arch": st.tuples(
    st.fixed_dictionaries({"flavor": st.just("debug")}), mapping(ARCH_NAMES, dict.fromkeys(ARCH_NAMES, ARCH_VALUES),
                                                                 max_size=3)).map(lambda ab: {**ab[0], **ab[1]})},
    optional={"checkpoint": st.sampled_from([None, "ckpt"]), "init_seed": st.integers(0, 2)})
MODEL_DOCS = st.one_of(JUNK_MODEL_DOCS, NEAR_MODEL_DOCS, NEAR_MODEL_DOCS)


def _refusal(e: EvalkitError, path: Path) -> str:
    msg = str(e)
    assert msg.strip() and "\n" not in msg, f"not one sentence: {msg!r}"
    assert str(path) in msg, f"does not name the file: {msg!r}"
    return type(e).__name__


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A tiny task and model, and a real checkpoint directory the fuzzed specs may point at."""
    from evalkit.models.native.lm import NativeLM

    TINY_MODELS["native"](tmp_path / "models")
    tiny_task(tmp_path / "tasks")
    m = NativeLM(NativeConfig.from_dict({"flavor": "debug", "attention_fraction": 1.0}).resolved())
    m.init_weights(0)
    m.save_pretrained(tmp_path / "ckpt")
    return tmp_path


def test_fuzzed_task_specs_load_or_refuse_in_one_sentence(place: Path) -> None:
    from evalkit.runner import plan

    model = load_model_spec(str(place / "models" / "r-hybrid.yaml"))
    path = place / "fuzz-task.yaml"
    seen = Counter()

    @fuzz_settings()
    @given(yaml_text(TASK_DOCS))
    def prop(text: str) -> None:
        path.write_text(text)
        try:
            spec = load_task_spec(str(path))
        except EvalkitError as e:
            return seen.add(f"refused:{_refusal(e, path)}")
        try:
            cells = plan([spec], [model])
        except EvalkitError as e:
            return seen.add(f"refused-at-plan:{_refusal(e, path)}")
        assert cells and all(c.spec == spec for c in cells)
        seen.add("planned")

    prop()
    seen.report("task specs")
    assert seen.outcomes.get("planned", 0) > 0 and seen.n >= 10


def test_fuzzed_model_specs_load_and_build_or_refuse_in_one_sentence(place: Path) -> None:
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.runner import plan

    task = load_task_spec(str(place / "tasks" / "r-needle.yaml"))
    path = place / "fuzz-model.yaml"
    seen = Counter()

    @fuzz_settings()
    @given(yaml_text(MODEL_DOCS))
    def prop(text: str) -> None:
        path.write_text(text)
        try:
            spec = load_model_spec(str(path))
        except EvalkitError as e:
            return seen.add(f"refused:{_refusal(e, path)}")
        if spec.kind == "native":  # a config that validates must build (on the meta device: no memory)
            with torch.device("meta"):
                NativeLM(NativeAdapter.config(spec))
        try:
            plan([task], [spec])
        except EvalkitError as e:
            msg = str(e)
            assert msg.strip() and "\n" not in msg, msg
            return seen.add(f"refused-at-plan:{type(e).__name__}")
        seen.add("planned")

    prop()
    seen.report("model specs")
    assert seen.outcomes.get("planned", 0) > 0 and seen.n >= 10


LAUGHS = "task: needle\na0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)) + "description: *a9\n"
NASTY = {
    "empty": "", "null": "null", "list": "[]", "block-list": "- 1\n- 2", "int": "42", "str": "'str'",
    "duplicate": "task: needle\ntask: needle", "task-list": "task: [needle]", "params-list": "task: needle\nparams: [1]",
    "no-lengths": "task: needle\nlengths: []", "control-chars": "\x00\x01",
    "empty-sweep": "task: needle\nlengths: [64]\nparams: {depth: []}",
    "self-alias": "&a [*a]", "self-alias-map": "task: &a {x: *a}", "billion-laughs": LAUGHS,
    "deep": "[" * 600 + "]" * 600, "complex-key": "? [a, b]\n: 1\n",
}


@pytest.mark.parametrize("name", NASTY)
def test_known_nasty_documents(tmp_path: Path, name: str) -> None:
    """Hand-picked edge cases the strategies reach only rarely, so CI always tries them (the
    self-referencing and exponential aliases, and deep nesting, were tracebacks or hangs)."""
    text = NASTY[name]
    path = tmp_path / "nasty.yaml"
    path.write_text(text)
    for load in (load_task_spec, load_model_spec):
        try:
            load(str(path))
        except EvalkitError as e:
            _refusal(e, path)


def test_value_strategy_reaches_every_yaml_type() -> None:
    """The junk values really cover None, bool, int, float, str, list and dict (so a refusal test
    cannot pass because the fuzzer only ever made strings)."""
    types: set[str] = set()

    @fuzz_settings(0.5)
    @given(VALUES)
    def prop(v: object) -> None:
        types.add(type(v).__name__)

    prop()
    assert {"NoneType", "bool", "int", "float", "str", "list", "dict"} <= types


def _cli_case(place: Path, argv: list[str], seen: Counter, what: str) -> None:
    """`evalkit run ...` exits 0 (whole cells stored) or 2 (one sentence, the store untouched)."""
    from reliability_util import call_cli, error_sentence, files_of, logical_digest

    out = place / "out"
    before = logical_digest(out), files_of(out)
    code, _, err = call_cli([*argv, "-d", str(out), "--samples", "1", "--limit", "2", "--no-cost", "--device", "cpu"])
    if code == 2:
        error_sentence(err)
        assert (logical_digest(out), files_of(out)) == before, f"refused {what} changed the store"
        return seen.add("refused")
    assert code == 0, err
    rows = store_rows(out)
    assert not rows["failed"] and all(len(v) == 1 for v in rows["records"].values())
    seen.add("ran")


def test_fuzzed_specs_through_evalkit_run_exit_0_or_2_and_never_write_partially(place: Path) -> None:
    from reliability_util import call_cli

    task, model = place / "tasks" / "r-needle.yaml", place / "models" / "r-attn.yaml"
    assert call_cli(["run", str(task), "--models", str(model), "-d", str(place / "out"), "--samples", "1",
                     "--no-cost", "--device", "cpu"])[0] == 0
    ftask, fmodel = place / "fuzz-task.yaml", place / "fuzz-model.yaml"
    seen = Counter()

    @fuzz_settings(0.2)
    @given(yaml_text(TASK_DOCS), yaml_text(MODEL_DOCS), st.booleans())
    def prop(task_text: str, model_text: str, fuzz_task: bool) -> None:
        if fuzz_task:
            ftask.write_text(task_text)
            _cli_case(place, ["run", str(ftask), "--models", str(model)], seen, "task spec")
        else:
            fmodel.write_text(model_text)
            _cli_case(place, ["run", str(task), "--models", str(fmodel)], seen, "model spec")

    prop()
    seen.report("specs through `evalkit run`")
    assert seen.outcomes.get("ran", 0) > 0 and seen.n >= 10
