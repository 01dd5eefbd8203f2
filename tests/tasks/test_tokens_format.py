"""The tokens format: vocabulary layout, exact rendering, haystack kinds, decoding."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.errors import UnknownNameError
from evalkit.tasks import FORMATS, Filler, Needle, Query, Sample
from evalkit.tasks.formats import split_budget
from evalkit.tasks.tokens import DEFAULT_VOCAB as V
from evalkit.tasks.tokens import TokenVocab, decode_tokens, fixed_length, render_tokens


def one_needle(seed: int = 1, depth: float = 0.25) -> Sample:
    return Sample(
        task="hand",
        index=0,
        seed=seed,
        parts=(Filler(depth), Needle((1,), (2,)), Filler(1 - depth), Query((1,), (2,))),
    )


def test_vocab_layout() -> None:
    assert (V.PAD, V.BOS, V.EOS, V.SEP, V.QUERY, V.ANSWER, V.NUMBER, V.COPY) == tuple(range(8))
    assert (V.DIGIT0, V.KEY0, V.VALUE0, V.FILLER0) == (8, 18, 146, 274)
    assert V.vocab_size == 512 and V.num_filler == 238
    assert (V.digit(9), V.key(127), V.value(127)) == (17, 145, 273)
    assert TokenVocab(vocab_size=290).num_filler == 16
    with pytest.raises(ValueError, match="vocab_size must be at least 290"):
        TokenVocab(vocab_size=289)


def test_encode_parts() -> None:
    assert V.encode(Needle((3, 5), (7, 9))) == [21, 23, 153, 155]
    assert V.encode(Needle((), (3, 1, 4), "digit")) == [6, 11, 9, 12]
    assert V.encode(Query((3,), (7,))) == [4, 21, 5, 153]
    assert V.encode(Query((), (1, 2), "digit")) == [7, 5, 9, 10]


def test_render_places_parts_and_splits_filler_exactly() -> None:
    # budget 13 - (1 + 2 + 4) = 6 -> exact shares 1.5 / 4.5 -> the tie goes to the first filler
    rendered = render_tokens(one_needle(), 13)
    ids = list(rendered.input_ids)
    assert ids[0] == V.BOS
    assert ids[3:5] == [19, 148] and ids[9:] == [4, 19, 5, 148]
    assert all(V.is_filler(t) for t in ids[1:3] + ids[5:9])
    assert rendered.answer_spans == ((12, 13),) and rendered.prompt_len == 12
    assert fixed_length(one_needle()) == 7
    assert len(render_tokens(one_needle(), 7).input_ids) == 7  # no filler at all


def test_too_short_message() -> None:
    with pytest.raises(ValueError) as err:
        render_tokens(one_needle(), 6)
    assert str(err.value) == (
        "context length 6 is too short for this sample: it needs at least 7 tokens"
    )


def test_sample_without_filler_cannot_be_padded() -> None:
    sample = Sample("hand", 0, 1, (Needle((1,), (2,)), Query((1,), (2,))))
    assert len(render_tokens(sample, 7).input_ids) == 7
    with pytest.raises(ValueError, match="no filler"):
        render_tokens(sample, 8)


@pytest.mark.parametrize(
    ("budget", "shares", "expected"),
    [
        (7, [0.5, 0.5], [4, 3]),
        (10, [0.3, 0.7], [3, 7]),
        (5, [0.0, 0.0, 0.0], [2, 2, 1]),
        (1, [1 / 3, 1 / 3, 1 / 3], [1, 0, 0]),
        (0, [0.2, 0.8], [0, 0]),
        (11, [0.0, 0.25, 0.75], [0, 3, 8]),
        (100, [0.125, 0.125, 0.75], [13, 12, 75]),
    ],
)
def test_split_budget(budget: int, shares: list[float], expected: list[int]) -> None:
    assert split_budget(budget, shares) == expected


def test_split_budget_always_sums_to_budget() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        shares = rng.random(int(rng.integers(1, 9)))
        budget = int(rng.integers(0, 5000))
        sizes = split_budget(budget, list(shares / shares.sum()))
        assert sum(sizes) == budget and min(sizes) >= 0


def test_random_filler_is_seeded_and_spread() -> None:
    a = render_tokens(one_needle(seed=1), 2000)
    assert a == render_tokens(one_needle(seed=1), 2000)
    b = render_tokens(one_needle(seed=2), 2000)
    assert a.input_ids != b.input_ids
    filler = [t for t in a.input_ids if V.is_filler(t)]
    assert len(filler) == 2000 - 7
    assert len(set(filler)) > 200  # uniform over 238 tokens


def test_repeat_filler_has_period_16() -> None:
    ids = render_tokens(one_needle(depth=0.0), 200, filler="repeat").input_ids
    haystack = ids[3:-4]  # after <bos> and the needle, before the query
    assert all(V.is_filler(t) for t in haystack)
    assert all(haystack[i] == haystack[i + 16] for i in range(len(haystack) - 16))
    assert len(set(haystack)) > 1


def test_constant_filler_is_one_token() -> None:
    ids = render_tokens(one_needle(), 200, filler="constant").input_ids
    assert len({t for t in ids if V.is_filler(t)}) == 1


def test_unknown_filler_suggests_a_name() -> None:
    with pytest.raises(ValueError, match="did you mean 'random'"):
        render_tokens(one_needle(), 100, filler="randon")


def test_custom_vocab_size_bounds_filler() -> None:
    vocab = TokenVocab(vocab_size=300)
    ids = render_tokens(one_needle(), 1000, vocab=vocab).input_ids
    assert max(ids) < 300 and min(t for t in ids if t >= vocab.FILLER0) >= 274


def test_formats_registry() -> None:
    assert FORMATS.get("tokens") is render_tokens
    assert "tokens" in FORMATS.names()
    with pytest.raises(UnknownNameError, match="did you mean 'tokens'"):
        FORMATS.get("token")


def test_decode_collapses_filler_and_names_symbols() -> None:
    ids = [1, *[300] * 5, 21, 23, 153, 155, 280, 290, 4, 21, 23, 5, 153, 155]
    expected = "<bos> …[5 filler]… k3 k5 v7 v9 …[2 filler]… <q> k3 k5 <a> v7 v9"
    assert decode_tokens(ids) == expected
    assert decode_tokens([6, 11, 9, 12, 7, 5, 11, 9, 12]) == "<num> 314 <copy> <a> 314"
    assert decode_tokens([0, 2, 3, 600]) == "<pad> <eos> <sep> ?600"
    assert decode_tokens([]) == ""


def test_decode_a_rendered_sample() -> None:
    text = decode_tokens(render_tokens(one_needle(depth=0.5), 1007).input_ids)
    assert text == "<bos> …[500 filler]… k1 v2 …[500 filler]… <q> k1 <a> v2"
