"""copy_number: the answer is the number's digits, placed where ``position`` says."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.tasks import TASKS, Filler, Needle, Query
from evalkit.tasks.tokens import DEFAULT_VOCAB as V
from evalkit.tasks.tokens import decode_tokens, render_tokens

CopyNumberTask = TASKS.get("copy_number")


def test_answer_is_the_digits() -> None:
    task = CopyNumberTask(CopyNumberTask.Params(digits=12))
    sample = task.sample(300, np.random.default_rng(0), 0)
    filler, needle, rest, query = sample.parts
    assert (filler, rest) == (Filler(0.0), Filler(1.0))
    assert isinstance(needle, Needle) and isinstance(query, Query)
    assert needle.key == query.key == ()
    assert needle.space == query.space == "digit"
    assert query.answer == needle.value and len(query.answer) == 12
    assert all(0 <= d <= 9 for d in query.answer)
    number = dict(sample.meta)["number"]
    assert number == "".join(map(str, query.answer))
    rendered = render_tokens(sample, 300)
    ((start, end),) = rendered.answer_spans
    assert end == 300
    assert [t - V.DIGIT0 for t in rendered.input_ids[start:end]] == list(query.answer)
    text = decode_tokens(rendered.input_ids)
    assert text == f"<bos> <num> {number} …[272 filler]… <copy> <a> {number}"


def test_leading_zero_is_allowed() -> None:
    task = CopyNumberTask(CopyNumberTask.Params(digits=5))
    samples = [task.sample(100, np.random.default_rng(s), s) for s in range(200)]
    firsts = {sample.queries[0].answer[0] for sample in samples}
    assert firsts == set(range(10))


@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
def test_number_sits_at_its_position(position: float) -> None:
    task = CopyNumberTask(CopyNumberTask.Params(digits=20, position=position))
    ids = render_tokens(task.sample(1044, np.random.default_rng(2), 0), 1044).input_ids
    budget = 1044 - 44
    start = ids.index(V.NUMBER)
    assert start == 1 + round(position * budget)
    assert list(ids[start + 1 : start + 21]) == list(ids[-20:])


@pytest.mark.parametrize(
    ("field", "value"), [("digits", 0), ("position", 1.01), ("position", -0.5)]
)
def test_validate_rejects(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CopyNumberTask(CopyNumberTask.Params(**{field: value})).validate()
