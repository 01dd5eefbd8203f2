"""Contract every registered task must meet; a new plugin is tested the moment it registers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from evalkit.tasks import TASKS, Filler, Needle, Query, Sample, Task
from evalkit.tasks.tokens import DEFAULT_VOCAB, FILLERS, fixed_length, render_tokens

TASK_NAMES = TASKS.names()
LENGTHS = (64, 257, 1000, 4096)


def make(name: str, **overrides: object) -> Task:
    cls = TASKS.get(name)
    task = cls(cls.Params(**overrides))
    task.validate()
    return task


def contains(haystack: list[int], needle: list[int]) -> bool:
    """Whether ``needle`` occurs as a contiguous run in ``haystack``."""
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def test_builtin_tasks_are_registered() -> None:
    assert {"needle", "assoc_recall", "copy_number", "multi_query"} <= set(TASK_NAMES)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_class_declares_the_contract(name: str) -> None:
    cls = TASKS.get(name)
    assert cls.name == name
    assert isinstance(cls.version, int) and cls.version >= 1
    assert cls.description and "\n" not in cls.description
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    assert cls.axes and set(cls.axes) <= fields
    assert set(cls.secondary.values()) <= {"queries", "tokens"}
    params = cls.Params()  # every field has a default
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, cls.axes[0], getattr(params, cls.axes[0]))
    cls(params).validate()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_validate_names_the_field_of_a_negative_number(name: str) -> None:
    cls = TASKS.get(name)
    numeric = [
        f.name
        for f in dataclasses.fields(cls.Params)
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
    ]
    assert numeric
    for field in numeric:
        with pytest.raises(ValueError, match=field):
            cls(cls.Params(**{field: -1})).validate()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sample_is_a_pure_function_of_its_inputs(name: str) -> None:
    task = make(name)
    a = task.sample(1000, np.random.default_rng(7), 3)
    b = task.sample(1000, np.random.default_rng(7), 3)
    c = task.sample(1000, np.random.default_rng(8), 3)
    assert isinstance(a, Sample)
    assert a == b and hash(a) == hash(b)
    assert a != c and a.seed != c.seed
    assert (a.task, a.index) == (name, 3)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sample_structure(name: str) -> None:
    task = make(name)
    for seed in range(5):
        sample = task.sample(1000, np.random.default_rng(seed), seed)
        meta = dict(sample.meta)
        assert all(isinstance(k, str) for k, _ in sample.meta)
        for axis in task.axes:  # the cell's axis values travel with the sample
            assert meta[axis] == getattr(task.params, axis)
        shares = [p.share for p in sample.parts if isinstance(p, Filler)]
        assert shares and min(shares) >= 0 and math.isclose(sum(shares), 1.0, abs_tol=1e-9)
        assert sample.queries
        for qi, query in enumerate(p for p in sample.parts if isinstance(p, Query)):
            before = sample.parts[: sample.parts.index(query)]
            assert Needle(query.key, query.answer, query.space) in before, (name, qi)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", TASK_NAMES)
def test_render_tokens_contract(name: str, length: int) -> None:
    task = make(name)
    sample = task.sample(length, np.random.default_rng(length), 0)
    fixed = fixed_length(sample)
    if length < fixed:
        with pytest.raises(ValueError, match="too short"):
            render_tokens(sample, length)
        return
    for target in sorted({length, fixed, fixed + 1}):
        rendered = render_tokens(sample, target)
        ids = list(rendered.input_ids)
        assert len(ids) == rendered.context_length == target
        assert rendered.format == "tokens"
        assert all(0 <= t < DEFAULT_VOCAB.vocab_size for t in ids)
        assert ids[0] == DEFAULT_VOCAB.BOS
        assert len(rendered.answer_spans) == len(sample.queries)
        previous_end = 1
        for (start, end), query in zip(rendered.answer_spans, sample.queries):
            assert previous_end <= start < end <= target
            previous_end = end
            assert ids[start:end] == DEFAULT_VOCAB.symbols(query.answer, query.space)
            query_start = start - (len(DEFAULT_VOCAB.encode(query)) - len(query.answer))
            assert ids[query_start:end] == DEFAULT_VOCAB.encode(query)
            fact = DEFAULT_VOCAB.encode(Needle(query.key, query.answer, query.space))
            assert contains(ids[:query_start], fact)
        assert rendered.prompt_len == rendered.answer_spans[0][0]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_render_too_short_raises(name: str) -> None:
    sample = make(name).sample(1000, np.random.default_rng(0), 0)
    fixed = fixed_length(sample)
    message = f"context length {fixed - 1} is too short for this sample: it needs at least {fixed}"
    with pytest.raises(ValueError, match=message):
        render_tokens(sample, fixed - 1)


@pytest.mark.parametrize("filler", sorted(FILLERS))
@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_haystack_kind_renders_exactly(name: str, filler: str) -> None:
    sample = make(name).sample(512, np.random.default_rng(1), 0)
    rendered = render_tokens(sample, 512, filler=filler)
    assert len(rendered.input_ids) == 512
    assert rendered == render_tokens(sample, 512, filler=filler)
