"""assoc_recall (Zoology MQAR): pairs up front, queries of those pairs, placement laws."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.tasks import TASKS, Filler, Needle, Query
from evalkit.tasks.tokens import DEFAULT_VOCAB as V
from evalkit.tasks.tokens import render_tokens

AssocRecallTask = TASKS.get("assoc_recall")


def make(**overrides: object):
    task = AssocRecallTask(AssocRecallTask.Params(**overrides))
    task.validate()
    return task


def test_queries_ask_for_keys_of_the_pairs_with_their_values() -> None:
    task = make(num_pairs=32)
    for seed in range(10):
        sample = task.sample(1000, np.random.default_rng(seed), seed)
        pairs = sample.parts[:32]
        assert all(isinstance(p, Needle) for p in pairs)
        assert not any(isinstance(p, Needle) for p in sample.parts[32:])
        table = {p.key: p.value for p in pairs}
        assert len(table) == 32  # distinct keys
        queries = sample.queries
        assert len(queries) == 32 and len({q.key for q in queries}) == 32
        assert all(table[q.key] == q.answer for q in queries)
        assert [q.key for q in queries] != [p.key for p in pairs]  # asked in random order


def test_pairs_are_adjacent_key_value_tokens_after_bos() -> None:
    sample = make(num_pairs=8).sample(256, np.random.default_rng(0), 0)
    ids = render_tokens(sample, 256).input_ids
    pairs = [p for p in sample.parts if isinstance(p, Needle)]
    expected = [t for p in pairs for t in (V.key(p.key[0]), V.value(p.value[0]))]
    assert list(ids[1:17]) == expected


def test_num_queries_and_lengths() -> None:
    task = make(num_pairs=10, num_queries=4, key_len=2, value_len=3)
    sample = task.sample(800, np.random.default_rng(1), 0)
    assert len(sample.queries) == 4
    assert all(len(q.key) == 2 and len(q.answer) == 3 for q in sample.queries)
    meta = dict(sample.meta)
    assert (meta["num_pairs"], meta["num_queries"], meta["placement"]) == (10, 4, "power_law")
    positions = meta["query_positions"]
    assert len(positions) == 4 and list(positions) == sorted(positions)
    assert all(0.0 <= x < 1.0 for x in positions)


def test_filler_shares_are_the_gaps_between_query_positions() -> None:
    task = make(num_pairs=6, placement="uniform")
    rng = np.random.default_rng(5)
    sample = task.sample(600, rng, 0)
    shares = [p.share for p in sample.parts if isinstance(p, Filler)]
    positions = np.cumsum(shares[:-1])
    assert positions == pytest.approx(dict(sample.meta)["query_positions"], abs=1e-4)
    kinds = [type(p) for p in sample.parts[6:]]
    assert kinds == [Filler, Query] * 6 + [Filler]


def mean_query_offset(placement: str) -> float:
    """Mean position of the <q> tokens, as a fraction of the region after the pairs."""
    task = make(num_pairs=16, placement=placement)
    offsets = []
    for seed in range(20):
        sample = task.sample(1000, np.random.default_rng(seed), seed)
        ids = render_tokens(sample, 1000).input_ids
        offsets += [(i - 33) / (1000 - 33) for i, t in enumerate(ids) if t == V.QUERY]
    return float(np.mean(offsets))


def test_power_law_puts_queries_nearer_the_pairs_than_uniform() -> None:
    power, uniform = mean_query_offset("power_law"), mean_query_offset("uniform")
    assert power < 0.35 < uniform
    assert 0.4 < uniform < 0.6


def test_power_law_and_uniform_draw_different_positions() -> None:
    power = make(placement="power_law").sample(2000, np.random.default_rng(0), 0)
    uniform = make(placement="uniform").sample(2000, np.random.default_rng(0), 0)
    assert dict(power.meta)["query_positions"] != dict(uniform.meta)["query_positions"]


def test_query_grid_follows_context_length() -> None:
    # one slot per 4-token query in the region after the 32 pair tokens, as in Zoology
    task = make(num_pairs=16, placement="uniform")
    positions = task.query_positions(1000, np.random.default_rng(0))
    slots = (1000 - 1 - 32) // 4
    assert all(abs(x * slots - round(x * slots)) < 1e-9 for x in positions)
    assert len(set(positions)) == 16


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_pairs": 0}, "num_pairs"),
        ({"num_pairs": 129}, "num_pairs"),
        ({"num_pairs": 4, "num_queries": 5}, "num_queries"),
        ({"num_queries": 0}, "num_queries"),
        ({"placement": "zipf"}, "placement"),
        ({"power_a": 0.0}, "power_a"),
        ({"key_len": 0}, "key_len"),
        ({"value_len": 0}, "value_len"),
    ],
)
def test_validate_rejects(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make(**overrides)
