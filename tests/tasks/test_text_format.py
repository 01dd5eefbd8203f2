"""The text format: exact lengths in a real tokenizer's tokens, canonical tokenisation, answer
spans, determinism, over-length, chat templates. Tokenizers are trained here (tests/hf/hf_tiny.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))

from hf_tiny import CHAT_TEMPLATE, train_tokenizer  # noqa: E402

from evalkit.tasks import TASKS  # noqa: E402
from evalkit.tasks.base import OverLengthError, Sample  # noqa: E402
from evalkit.tasks.text import (  # noqa: E402
    KEY_WORDS,
    NOISE_SENTENCES,
    NUMBERS,
    UUIDS,
    VALUE_WORDS,
    TextTokenizer,
    key_text,
    render_text,
    text_tokenizer,
    value_text,
)


@pytest.fixture(scope="module", params=["bpe", "metaspace"])
def tok(request: pytest.FixtureRequest) -> Any:
    return train_tokenizer(request.param)


def sample(name: str, length: int, index: int = 0, **params: Any) -> Sample:
    cls = TASKS.get(name)
    return cls(cls.Params(**params)).sample(length, np.random.default_rng(1000 + index), index)


SMALL = {"needle": {}, "copy_number": {"digits": 12}, "multi_query": {}, "assoc_recall": {"num_pairs": 3}}


@pytest.mark.parametrize("values", ["numbers", "uuids", "words"])
@pytest.mark.parametrize("haystack", ["noise", "words", "constant"])
def test_exact_length_and_canonical_tokenisation(tok: Any, haystack: str, values: str) -> None:
    """Every task at odd lengths: exactly L tokens, and the ids are what the tokenizer itself
    makes of the rendered text (so the model sees ordinary text, answers included)."""
    rendered = 0
    for name, params in SMALL.items():
        for L in (301, 777, 2048):
            try:
                r = render_text(sample(name, L, **params), L, tokenizer=tok, haystack=haystack, values=values)
            except OverLengthError:  # e.g. three UUID needles and queries at 301 tokens of a tiny vocab
                assert L < 2048
                continue
            rendered += 1
            assert r.context_length == L, (name, L)
            text = tok.decode(list(r.input_ids), skip_special_tokens=True)
            assert list(tok(text)["input_ids"]) == list(r.input_ids), (name, L, haystack, values)
    assert rendered >= 8


def test_answer_spans_hold_the_answers(tok: Any) -> None:
    s = sample("multi_query", 600, num_needles=4, num_queries=3)
    r = render_text(s, 600, tokenizer=tok, values="words")
    assert len(r.answer_spans) == 3 and r.answer_spans[-1][1] == 600
    for (a, b), q, text in zip(r.answer_spans, s.queries, r.answers_text):
        assert text == value_text(q.answer, q.space, "words")
        assert tok.decode(list(r.input_ids[a:b])).strip() == text
    assert r.prompt_len == r.answer_spans[0][0]
    assert r.prompt_text.endswith("mentioned in the provided text is:")
    assert tok.decode(list(r.input_ids[: r.prompt_len]), skip_special_tokens=True) == r.prompt_text


def test_needle_sentence_key_and_depth(tok: Any) -> None:
    for depth in (0.0, 0.5, 1.0):
        s = sample("needle", 1000, depth=depth)
        r = render_text(s, 1000, tokenizer=tok, haystack="noise")
        q = s.queries[0]
        value = value_text(q.answer, "value", "numbers")
        needle = f"One of the special magic numbers for {key_text(q.key)} is: {value}."
        assert needle in r.prompt_text
        haystacks = [int(n) for n in re.findall(r"…\[(\d+) haystack tokens\]…", r.summary)]
        if depth == 0.5:  # the budget is split in half (split_budget), each part filled exactly
            assert len(haystacks) == 2 and abs(haystacks[0] - haystacks[1]) <= 1
        else:
            assert len(haystacks) == 1
        before = r.prompt_text.index(needle) / len(r.prompt_text)
        assert abs(before - depth) < 0.15
    assert NOISE_SENTENCES[0] in r.prompt_text and NOISE_SENTENCES[4] in r.prompt_text


def test_deterministic_and_seeded(tok: Any) -> None:
    a = render_text(sample("needle", 500), 500, tokenizer=tok)
    assert render_text(sample("needle", 500), 500, tokenizer=tok) == a
    b = render_text(sample("needle", 500, index=1), 500, tokenizer=tok)
    assert a.input_ids != b.input_ids  # another sample: another key, value and word haystack


def test_id_to_word_mappings_are_fixed() -> None:
    """Changing these changes every text sample: they are part of the generator (bump its version)."""
    assert len(KEY_WORDS) == len(VALUE_WORDS) == 128 and not set(KEY_WORDS) & set(VALUE_WORDS)
    assert (KEY_WORDS[0], KEY_WORDS[127], VALUE_WORDS[0]) == ("apple", "zebra", "amber")
    assert all(len(n) == 7 and n.isdigit() for n in NUMBERS) and len(set(NUMBERS)) == 128
    assert len(set(UUIDS)) == 128 and all(len(u) == 36 for u in UUIDS)
    assert NUMBERS[:3] == ("6353608", "4942722", "3135015")
    assert value_text((3, 1, 4), "digit", "numbers") == "314"
    assert value_text((0, 1), "value", "numbers") == NUMBERS[0] + NUMBERS[1]


def test_over_length_is_an_error_never_a_truncation(tok: Any) -> None:
    with pytest.raises(OverLengthError, match="too short for this sample"):
        render_text(sample("needle", 40), 40, tokenizer=tok)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        render_text(sample("needle", 400), 400)


def test_anchored_piece_tokenisation_matches_plain(tok: Any) -> None:
    """The fallback for tokenizers whose pieces do not concatenate (each piece tokenised after
    an anchor text) must give the same ids where the plain way is right."""
    view = text_tokenizer(tok)
    anchored = TextTokenizer(tok)
    anchored.anchored = True
    pieces = [" One of the special magic numbers for apple is: 1234567.", " time", " 7654321"]
    assert anchored.encode(pieces) == view.encode(pieces)


def test_chat_template_wraps_prompt_and_keeps_answers() -> None:
    tok = train_tokenizer("bpe")
    tok.chat_template = CHAT_TEMPLATE
    s = sample("multi_query", 700, num_queries=2)
    r = render_text(s, 700, tokenizer=tok, chat=True)
    assert r.context_length == 700 and r.input_ids.count(tok.bos_token_id) == 2  # template's two <s>, no extra BOS
    assert r.prompt_text.startswith("<s>[user] Some special magic numbers")
    assert "</s><s>[assistant] The special magic number for" in r.prompt_text
    for (a, b), text in zip(r.answer_spans, r.answers_text):
        assert tok.decode(list(r.input_ids[a:b])).strip() == text
    with pytest.raises(ValueError, match="every query at the end"):
        render_text(sample("assoc_recall", 900, num_pairs=3), 900, tokenizer=tok, chat=True)
    with pytest.raises(ValueError, match="no chat template"):
        render_text(s, 700, tokenizer=train_tokenizer("bpe"), chat=True)
