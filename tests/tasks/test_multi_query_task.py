"""multi_query: needles at sorted random depths, distinct queried needles at the end."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.tasks import TASKS, Filler, Needle, Query
from evalkit.tasks.tokens import render_tokens

MultiQueryTask = TASKS.get("multi_query")


def test_answers_match_the_queried_needles() -> None:
    task = MultiQueryTask(MultiQueryTask.Params(num_needles=8, num_queries=5))
    task.validate()
    orders = set()
    for seed in range(10):
        sample = task.sample(2000, np.random.default_rng(seed), seed)
        needles = [p for p in sample.parts if isinstance(p, Needle)]
        assert len(needles) == 8 and len({n.key for n in needles}) == 8
        queries = sample.queries
        assert len(queries) == 5 and len({q.key for q in queries}) == 5
        queried = dict(sample.meta)["queried"]
        assert [(q.key, q.answer) for q in queries] == [
            (needles[i].key, needles[i].value) for i in queried
        ]
        orders.add(tuple(queried))
        rendered = render_tokens(sample, 2000)
        assert rendered.answer_spans[-1][1] == 2000  # queries close the sequence
    assert len(orders) == 10


def test_layout_needles_then_queries_back_to_back() -> None:
    task = MultiQueryTask(MultiQueryTask.Params(num_needles=3, num_queries=3))
    sample = task.sample(500, np.random.default_rng(0), 0)
    kinds = [type(p) for p in sample.parts]
    assert kinds == [Filler, Needle] * 3 + [Filler] + [Query] * 3
    depths = dict(sample.meta)["depths"]
    assert list(depths) == sorted(depths) and all(0 <= d < 1 for d in depths)
    shares = [p.share for p in sample.parts if isinstance(p, Filler)]
    assert np.cumsum(shares)[:-1] == pytest.approx(depths, abs=1e-4)
    assert dict(sample.meta)["num_needles"] == 3 and dict(sample.meta)["num_queries"] == 3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_needles": 0}, "num_needles"),
        ({"num_needles": 2, "num_queries": 3}, "num_queries"),
        ({"num_queries": 0}, "num_queries"),
        ({"key_len": 0}, "key_len"),
        ({"value_len": 0}, "value_len"),
    ],
)
def test_validate_rejects(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MultiQueryTask(MultiQueryTask.Params(**overrides)).validate()
