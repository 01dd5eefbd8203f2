"""The ``tokens`` format: samples as ids in a small synthetic vocabulary, at exact lengths.

As in Zoology's MQAR, a needle is its key tokens followed by its value tokens, with no separators;
a few special tokens mark where numbers and queries start. No tokenizer is involved, so a sample
renders to exactly the requested number of ids. This is the format native models train and are
evaluated on.

Two options change how queries are written (a task spec's ``answers`` and ``queries``; both part
of the cell key only when set off their defaults): ``answers="hidden"`` puts ``<pad>`` where the
answer tokens were and carries the answers as ``Rendered.targets``, so no answer is ever model
input (the earlier answers of an all-pairs MQAR otherwise let a model answer by elimination);
``queries="bare"`` drops the ``<q>``/``<a>`` tags, so the answer is predicted at the key itself.
Both together are Zoology's MQAR query, ``key 0``.

Layout (``TokenVocab``)::

    0 <pad>  1 <bos>  2 <eos>  3 <sep>  4 <q>  5 <a>  6 <num>  7 <copy>
    8..17     digits 0-9
    18..145   keys   (KEY_SPACE = 128)
    146..273  values (VALUE_SPACE = 128)
    274..     filler (haystack), up to vocab_size - 1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from evalkit.registry import did_you_mean
from evalkit.tasks.base import (
    KEY_SPACE,
    VALUE_SPACE,
    Filler,
    Needle,
    Query,
    Rendered,
    Sample,
    Space,
)
from evalkit.tasks.formats import FORMATS, split_budget

MIN_FILLER_TOKENS = 16  # a haystack drawn from fewer distinct tokens would be too easy to skip
REPEAT_PERIOD = 16  # length of the pattern the ``repeat`` haystack repeats
# How queries show their answers: ``shown`` (``<q> key <a> value``, the value is the next input, as
# under generation) or ``hidden`` (``<q> key <a> <pad>``: Zoology's ``key 0``; the value is only a
# target, so no earlier answer can be read off the input).
ANSWER_MODES = ("shown", "hidden")
# How a keyed query is written: ``tagged`` (``<q> key <a> answer``: the answer is predicted one token
# after the key) or ``bare`` (``key answer``, Zoology's MQAR: the answer is predicted at the key).
QUERY_STYLES = ("tagged", "bare")


@dataclass(frozen=True)
class TokenVocab:
    """Layout of the synthetic vocabulary; only its size (and so the filler range) varies."""

    vocab_size: int = 512  # total number of ids; ids FILLER0..vocab_size-1 are filler

    PAD: ClassVar[int] = 0
    BOS: ClassVar[int] = 1
    EOS: ClassVar[int] = 2
    SEP: ClassVar[int] = 3
    QUERY: ClassVar[int] = 4  # starts a query: <q> key <a> answer
    ANSWER: ClassVar[int] = 5  # the answer tokens follow
    NUMBER: ClassVar[int] = 6  # starts a key-less needle (the number to copy)
    COPY: ClassVar[int] = 7  # starts a key-less query: <copy> <a> answer
    DIGIT0: ClassVar[int] = 8
    KEY0: ClassVar[int] = DIGIT0 + 10
    VALUE0: ClassVar[int] = KEY0 + KEY_SPACE
    FILLER0: ClassVar[int] = VALUE0 + VALUE_SPACE

    def __post_init__(self) -> None:
        if self.vocab_size < self.FILLER0 + MIN_FILLER_TOKENS:
            raise ValueError(
                f"vocab_size must be at least {self.FILLER0 + MIN_FILLER_TOKENS} "
                f"({MIN_FILLER_TOKENS} filler tokens), got {self.vocab_size}"
            )

    @property
    def num_filler(self) -> int:
        """How many distinct filler tokens there are."""
        return self.vocab_size - self.FILLER0

    # symbol id (as in a Sample) -> token id ------------------------------------------------
    def key(self, k: int) -> int:
        return self.KEY0 + k

    def value(self, v: int) -> int:
        return self.VALUE0 + v

    def digit(self, d: int) -> int:
        return self.DIGIT0 + d

    def symbols(self, ids: Sequence[int], space: Space) -> list[int]:
        """Token ids of a needle value / query answer whose ids live in ``space``."""
        to_token = self.digit if space == "digit" else self.value
        return [to_token(x) for x in ids]

    def encode(self, part: Needle | Query, tagged: bool = True) -> list[int]:
        """The fixed (non-filler) tokens of a needle or a query, answer included.

        ``Needle``: key tokens then value tokens; a key-less needle is ``<num>`` then its value.
        ``Query``: ``<q>`` key ``<a>`` answer; a key-less query (copy) is ``<copy> <a>`` answer.
        With ``tagged=False`` a keyed query is bare: key then answer, like a needle (Zoology).
        """
        head = [self.key(k) for k in part.key] if part.key else []
        if isinstance(part, Needle):
            return (head or [self.NUMBER]) + self.symbols(part.value, part.space)
        if not tagged:
            if not part.key:
                raise ValueError("queries: bare needs keyed queries; this sample has a key-less one "
                                 "(<copy> <a> answer), which only the tagged style can write")
            return [*head, *self.symbols(part.answer, part.space)]
        prefix = [self.QUERY, *head] if part.key else [self.COPY]
        return [*prefix, self.ANSWER, *self.symbols(part.answer, part.space)]

    # token id -> readable ------------------------------------------------------------------
    def is_filler(self, t: int) -> bool:
        return self.FILLER0 <= t < self.vocab_size

    def is_digit(self, t: int) -> bool:
        return self.DIGIT0 <= t < self.KEY0

    def name(self, t: int) -> str:
        """Readable name of one token: ``<q>``, ``k12``, ``v3``, ``7``, ``f300`` or ``?id``."""
        if t in _SPECIAL_NAMES:
            return _SPECIAL_NAMES[t]
        if self.is_digit(t):
            return str(t - self.DIGIT0)
        if self.KEY0 <= t < self.VALUE0:
            return f"k{t - self.KEY0}"
        if self.VALUE0 <= t < self.FILLER0:
            return f"v{t - self.VALUE0}"
        if self.is_filler(t):
            return f"f{t - self.FILLER0}"
        return f"?{t}"


_SPECIAL_NAMES = {
    TokenVocab.PAD: "<pad>",
    TokenVocab.BOS: "<bos>",
    TokenVocab.EOS: "<eos>",
    TokenVocab.SEP: "<sep>",
    TokenVocab.QUERY: "<q>",
    TokenVocab.ANSWER: "<a>",
    TokenVocab.NUMBER: "<num>",
    TokenVocab.COPY: "<copy>",
}

DEFAULT_VOCAB = TokenVocab()


# haystacks: (rng, n, vocab) -> n filler ids ---------------------------------------------------
def _random_filler(rng: np.random.Generator, n: int, vocab: TokenVocab) -> np.ndarray:
    """Uniform over the filler tokens: the usual, hard haystack."""
    return rng.integers(vocab.FILLER0, vocab.vocab_size, size=n)


def _repeat_filler(rng: np.random.Generator, n: int, vocab: TokenVocab) -> np.ndarray:
    """One random REPEAT_PERIOD-token pattern over and over: an easy, predictable haystack."""
    pattern = rng.integers(vocab.FILLER0, vocab.vocab_size, size=REPEAT_PERIOD)
    return np.resize(pattern, n)


def _constant_filler(rng: np.random.Generator, n: int, vocab: TokenVocab) -> np.ndarray:
    """A single filler token repeated: the easiest haystack."""
    return np.full(n, rng.integers(vocab.FILLER0, vocab.vocab_size))


FILLERS: dict[str, Callable[[np.random.Generator, int, TokenVocab], np.ndarray]] = {
    "random": _random_filler,
    "repeat": _repeat_filler,
    "constant": _constant_filler,
}


def fixed_length(sample: Sample, vocab: TokenVocab = DEFAULT_VOCAB, tagged: bool = True) -> int:
    """Tokens the sample needs besides filler (``<bos>``, needles, queries): its minimum length."""
    return 1 + sum(len(vocab.encode(p, tagged)) for p in sample.parts if not isinstance(p, Filler))


@FORMATS.register("tokens")
def render_tokens(
    sample: Sample,
    context_length: int,
    vocab: TokenVocab = DEFAULT_VOCAB,
    filler: str = "random",
    answers: str = "shown",
    queries: str = "tagged",
) -> Rendered:
    """Render ``sample`` as exactly ``context_length`` token ids: ``<bos>`` then its parts.

    The filler budget (``context_length`` minus every fixed token) is split among the Filler
    parts by share (``split_budget``); the filler ids come from ``default_rng(sample.seed)``
    with the ``filler`` haystack (``random``, ``repeat`` or ``constant``), so rendering is
    deterministic. ``answer_spans`` locate each query's answer tokens. With ``answers="hidden"``
    those positions hold ``<pad>`` placeholders and the answers go to ``Rendered.targets``
    (same length, same positions, same filler: only the answer tokens differ). With
    ``queries="bare"`` keyed queries are written ``key answer`` (Zoology's MQAR, where a hidden
    answer makes the query ``key 0``).
    """
    if filler not in FILLERS:
        raise ValueError(f"unknown filler '{filler}'{did_you_mean(filler, tuple(FILLERS))}")
    if answers not in ANSWER_MODES:
        raise ValueError(f"unknown answers mode '{answers}'{did_you_mean(answers, ANSWER_MODES)}")
    if queries not in QUERY_STYLES:
        raise ValueError(f"unknown query style '{queries}'{did_you_mean(queries, QUERY_STYLES)}")
    tagged = queries == "tagged"
    fixed = fixed_length(sample, vocab, tagged)
    budget = context_length - fixed
    if budget < 0:
        raise ValueError(
            f"context length {context_length} is too short for this sample: "
            f"it needs at least {fixed} tokens"
        )
    shares = [p.share for p in sample.parts if isinstance(p, Filler)]
    if not shares:
        if budget:
            raise ValueError(
                f"sample has no filler to pad it to {context_length} tokens; it has {fixed}"
            )
        sizes: list[int] = []
    else:
        sizes = split_budget(budget, shares)
    stream = FILLERS[filler](np.random.default_rng(sample.seed), budget, vocab).tolist()

    ids: list[int] = [vocab.BOS]
    spans: list[tuple[int, int]] = []
    used = 0
    filler_sizes = iter(sizes)
    for part in sample.parts:
        if isinstance(part, Filler):
            n = next(filler_sizes)
            ids.extend(stream[used : used + n])
            used += n
            continue
        ids.extend(vocab.encode(part, tagged))
        if isinstance(part, Query):
            spans.append((len(ids) - len(part.answer), len(ids)))
    targets: tuple[tuple[int, ...], ...] = ()
    if answers == "hidden":
        targets = tuple(tuple(ids[s:e]) for s, e in spans)
        for s, e in spans:
            ids[s:e] = [vocab.PAD] * (e - s)
    return Rendered(input_ids=tuple(ids), answer_spans=tuple(spans), format="tokens", targets=targets)


def decode_tokens(ids: Sequence[int], vocab: TokenVocab = DEFAULT_VOCAB) -> str:
    """A readable line for ``evalkit show``: filler runs collapsed, digit runs joined.

    e.g. ``<bos> …[812 filler]… k12 k7 v3 v99 …[40 filler]… <q> k12 k7 <a> v3 v99``.
    """
    tokens = [int(t) for t in ids]
    words: list[str] = []
    i = 0
    while i < len(tokens):
        j = i + 1
        if vocab.is_filler(tokens[i]):
            while j < len(tokens) and vocab.is_filler(tokens[j]):
                j += 1
            words.append(f"…[{j - i} filler]…")
        elif vocab.is_digit(tokens[i]):
            while j < len(tokens) and vocab.is_digit(tokens[j]):
                j += 1
            words.append("".join(vocab.name(t) for t in tokens[i:j]))
        else:
            words.append(vocab.name(tokens[i]))
        i = j
    return " ".join(words)


__all__ = [
    "ANSWER_MODES",
    "DEFAULT_VOCAB",
    "FILLERS",
    "QUERY_STYLES",
    "TokenVocab",
    "decode_tokens",
    "fixed_length",
    "render_tokens",
]
