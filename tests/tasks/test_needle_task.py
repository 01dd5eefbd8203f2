"""needle: the needle sits at its depth; distractors are present, distinct and never queried."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.tasks import TASKS, Needle, Query
from evalkit.tasks.tokens import DEFAULT_VOCAB as V
from evalkit.tasks.tokens import fixed_length, render_tokens

NeedleTask = TASKS.get("needle")


def find(ids: tuple[int, ...], run: list[int]) -> int:
    """Index of the first occurrence of ``run`` in ``ids`` (-1 if absent)."""
    starts = range(len(ids) - len(run) + 1)
    return next((i for i in starts if list(ids[i : i + len(run)]) == run), -1)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("length", [100, 1000, 4096])
def test_needle_sits_at_its_depth(depth: float, length: int) -> None:
    task = NeedleTask(NeedleTask.Params(depth=depth))
    sample = task.sample(length, np.random.default_rng(0), 0)
    (needle,) = [p for p in sample.parts if isinstance(p, Needle)]
    ids = render_tokens(sample, length).input_ids
    budget = length - fixed_length(sample)
    position = find(ids, V.encode(needle))
    assert abs(position - (1 + depth * budget)) <= task.params.key_len + task.params.value_len
    if depth == 0.0:
        assert position == 1  # right after <bos>
    if depth == 1.0:
        query_len = len(V.encode(sample.queries[0]))
        assert position == length - query_len - 4  # directly before the query


def test_parts_and_meta() -> None:
    sample = NeedleTask(NeedleTask.Params(depth=0.3)).sample(500, np.random.default_rng(3), 9)
    kinds = [type(p).__name__ for p in sample.parts]
    assert kinds == ["Filler", "Needle", "Filler", "Query"]
    assert [p.share for p in sample.parts[::2]] == [0.3, 0.7]
    needle, query = sample.parts[1], sample.parts[3]
    assert (query.key, query.answer) == (needle.key, needle.value)
    assert len(needle.key) == 2 and len(needle.value) == 2
    assert dict(sample.meta) == {"depth": 0.3, "distractors": 0, "distractor_depths": ()}


def test_distractors_have_distinct_keys_and_are_not_queried() -> None:
    task = NeedleTask(NeedleTask.Params(distractors=6, key_len=1, value_len=3))
    task.validate()
    for seed in range(10):
        sample = task.sample(2000, np.random.default_rng(seed), seed)
        needles = [p for p in sample.parts if isinstance(p, Needle)]
        (query,) = [p for p in sample.parts if isinstance(p, Query)]
        assert len(needles) == 7
        assert len({n.key for n in needles}) == 7
        assert sum(n.key == query.key for n in needles) == 1
        assert all(len(n.value) == 3 for n in needles)
        ids = render_tokens(sample, 2000).input_ids
        assert all(find(ids, V.encode(n)) >= 0 for n in needles)
        depths = dict(sample.meta)["distractor_depths"]
        assert len(depths) == 6 and len(set(depths)) == 6 and list(depths) == sorted(depths)


def test_queried_needle_keeps_its_depth_among_distractors() -> None:
    task = NeedleTask(NeedleTask.Params(depth=0.8, distractors=3))
    sample = task.sample(1000, np.random.default_rng(4), 0)
    query = sample.queries[0]
    share_before = 0.0
    for part in sample.parts:
        if isinstance(part, Needle) and part.key == query.key:
            break
        share_before += getattr(part, "share", 0.0)
    assert share_before == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("field", "value"),
    [("depth", 1.5), ("depth", -0.1), ("key_len", 0), ("value_len", 0), ("distractors", 128)],
)
def test_validate_rejects(field: str, value: object) -> None:
    overrides = {field: value, **({"key_len": 1} if field == "distractors" else {})}
    with pytest.raises(ValueError, match=field):
        NeedleTask(NeedleTask.Params(**overrides)).validate()
