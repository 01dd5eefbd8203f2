"""The ``text`` format: a structured ``Sample`` as natural language, in the model's own tokens.

RULER-style rendering: a header, a haystack (RULER's noise sentences, random words, or one
sentence over and over), needle sentences ("One of the special magic numbers for {key} is:
{value}.") where the sample has its needles, then each query's question and an answer prefix
followed by the answer, which teacher forcing scores. Keys are words, values are 7-digit numbers,
UUIDs or words (a digit-space value, as in ``copy_number``, is its digit string). Every id → word
mapping is fixed: the shipped lists in ``evalkit/tasks/data/`` are indexed by id; numbers and UUIDs
come from a hash of the id. Nothing is downloaded.

**Length in the model's tokens.** The text is built from *pieces* (header, needle sentences,
questions, answers, haystack words), each tokenised once — haystack words once per tokenizer,
the rest once per sample in one batched call — and the ids are concatenated. Every piece after
the first starts with a space and none ends with whitespace, so for byte-level BPE and
SentencePiece-style (Metaspace) tokenizers the concatenation *is* the tokenisation of the whole
text (tested); tokenizers where it is not get each piece tokenised after an anchor text instead
(``TextTokenizer``). The haystack budget (requested length minus every fixed token) is split
among the Filler parts with ``split_budget``; each part takes whole words from its stream up to
its budget (a cumulative sum and a binary search), then fills the last few tokens with the next
words that fit. **Tolerance:** the length is exact whenever some haystack word fits the last gap
of each filler part — always in practice, since every real tokenizer has one-token words; else a
part ends short by less than one word (``MAX_WORD_TOKENS``). Never longer. The achieved length is
``len(input_ids)``, which the runner stores per record. If the fixed parts alone exceed the
length, rendering raises ``OverLengthError`` (the runner's over-length policy decides: fail or
count as skipped); nothing is ever truncated.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.registry import did_you_mean
from evalkit.tasks.base import KEY_SPACE, VALUE_SPACE, Filler, Needle, OverLengthError, Query, Rendered, Sample
from evalkit.tasks.formats import FORMATS, split_budget

DATA = Path(__file__).parent / "data"
LOOKAHEAD = 64  # words searched past the budget for one that fits the last gap of a filler part
MAX_WORD_TOKENS = 16  # a haystack word longer than this many tokens is not used (odd tokenizers)
_STREAM_CHUNK = 4096  # random-word streams are drawn in chunks of this size (deterministic)


def _read_list(name: str) -> tuple[str, ...]:
    lines = (DATA / name).read_text().splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


KEY_WORDS = _read_list("keys.txt")
VALUE_WORDS = _read_list("values.txt")
HAYSTACK_WORDS = _read_list("haystack_words.txt")
NOISE_SENTENCES = _read_list("noise.txt")


def _hashed(kind: str, i: int) -> bytes:
    return hashlib.sha256(f"evalkit:text:{kind}:{i}".encode()).digest()


# value id -> 7-digit number / UUID: fixed functions of the id (hash-based, checked distinct below)
NUMBERS = tuple(str(1_000_000 + int.from_bytes(_hashed("number", v)[:8], "little") % 9_000_000)
                for v in range(VALUE_SPACE))
UUIDS = tuple(str(uuid.UUID(bytes=_hashed("uuid", v)[:16], version=4)) for v in range(VALUE_SPACE))

assert len(set(KEY_WORDS)) == KEY_SPACE, f"data/keys.txt must hold {KEY_SPACE} distinct words"
assert len(set(VALUE_WORDS)) == VALUE_SPACE, f"data/values.txt must hold {VALUE_SPACE} distinct words"
assert len(set(NUMBERS)) == VALUE_SPACE and len(set(UUIDS)) == VALUE_SPACE


@dataclass(frozen=True)
class Template:
    """Sentences of one template; ``{noun}`` / ``{nouns}`` name the value kind."""

    header: str
    needle: str
    question: str
    answer_prefix: str
    # key-less needles (copy a number): the number is the answer
    number_header: str
    number_needle: str
    number_question: str
    number_answer_prefix: str


TEMPLATES: dict[str, Template] = {
    # RULER's niah template (Hsieh et al., 2024), one question per query
    "ruler": Template(
        header=("Some special magic {nouns} are hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the {nouns} afterwards."),
        needle="One of the special magic {nouns} for {key} is: {value}.",
        question="What is the special magic {noun} for {key} mentioned in the provided text?",
        answer_prefix="The special magic {noun} for {key} mentioned in the provided text is:",
        number_header=("A long number is hidden within the following text. Make sure to memorize it. "
                       "I will ask you to repeat it afterwards."),
        number_needle="The long number to remember is: {value}.",
        number_question="What is the long number mentioned in the provided text?",
        number_answer_prefix="The long number mentioned in the provided text is:",
    ),
}
NOUNS = {"numbers": ("number", "numbers"), "uuids": ("uuid", "uuids"), "words": ("word", "words")}
HAYSTACKS = ("noise", "words", "constant")
# the tokens format's ``filler:`` mapped to its text analogue when ``haystack: auto``
FILLER_TO_HAYSTACK = {"random": "words", "repeat": "noise", "constant": "constant"}
OVERLENGTH = ("error", "skip")
# tasks that write their own text (task name -> (sample, context_length, tokenizer, chat wrappers) -> Rendered):
# RULER's NIAH (``evalkit.tasks.ruler``) needs RULER's exact prompt and length rule, not this layout
TASK_RENDERERS: dict[str, Callable[..., Rendered]] = {}

# options a task spec's ``text:`` mapping may set, with their allowed values; the first is the default
TEXT_OPTIONS: dict[str, tuple[str, ...]] = {
    "haystack": ("auto", *HAYSTACKS),  # auto: from the spec's ``filler`` (random→words, repeat→noise)
    "values": tuple(NOUNS),
    "template": tuple(TEMPLATES),
    "overlength": OVERLENGTH,  # fixed parts longer than the context: fail the cell, or skip and count
}


def check_text_options(opts: Mapping[str, Any]) -> None:
    """ValueError naming the option for an unknown option or value (spec.py adds file and line)."""
    for name, value in opts.items():
        if name not in TEXT_OPTIONS:
            raise ValueError(f"unknown text option '{name}'{did_you_mean(str(name), tuple(TEXT_OPTIONS))}")
        if value not in TEXT_OPTIONS[name]:
            raise ValueError(f"text option '{name}' must be one of {', '.join(TEXT_OPTIONS[name])}, got {value!r}")


def resolve_text_options(opts: Mapping[str, Any], filler: str) -> dict[str, str]:
    """Every text option with its default filled in and ``haystack: auto`` resolved."""
    out = {name: str(opts.get(name, allowed[0])) for name, allowed in TEXT_OPTIONS.items()}
    if out["haystack"] == "auto":
        out["haystack"] = FILLER_TO_HAYSTACK.get(filler, "words")
    return out


# --------------------------------------------------------------------------- ids → words
def key_text(key: Sequence[int]) -> str:
    return "-".join(KEY_WORDS[k] for k in key)


def value_text(value: Sequence[int], space: str, kind: str) -> str:
    """A needle value / answer as text: digits joined; numbers concatenated (7 digits per id);
    UUIDs space-separated; words joined with ``-``."""
    if space == "digit":
        return "".join(str(d) for d in value)
    if kind == "numbers":
        return "".join(NUMBERS[v] for v in value)
    if kind == "uuids":
        return " ".join(UUIDS[v] for v in value)
    return "-".join(VALUE_WORDS[v] for v in value)


# --------------------------------------------------------------------------- the tokenizer side
ANCHOR = "Text."
PROBES = (("Some text.", " The grass is green."), ("is:", " 1234567"), ("green.", " One of the"),
          ("text?", " The special"), ("again.", " time"))


class _WordTable:
    """Token ids of a word list, each word tokenised once (space-led): CSR layout for gathering."""

    def __init__(self, words: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
        self.words = tuple(words)
        self.lens = np.array([len(x) for x in ids], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lens)[:-1]]).astype(np.int64)
        self.flat = np.array([t for x in ids for t in x], dtype=np.int64)
        self.by_length = np.argsort(self.lens, kind="stable")  # fallback fillers, shortest first

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Concatenated token ids of words ``idx`` (in order)."""
        lens = self.lens[idx]
        ends = np.cumsum(lens)
        return self.flat[np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(self.starts[idx] - ends + lens, lens)]


class TextTokenizer:
    """What the format needs from a transformers tokenizer, worked out once per tokenizer:
    the special ids it puts first (BOS), how to tokenise a piece so that concatenated pieces
    match the whole text's tokenisation, and the haystack word tables."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix = self._special_prefix()
        self._tables: dict[str, _WordTable] = {}
        self.anchored = False
        if not self._consistent():
            self.anchored = True
            if not self._consistent():
                name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
                raise ValueError(f"tokenizer '{name}' does not tokenise text pieces consistently "
                                 "(neither alone nor after an anchor), so exact lengths cannot be built")

    def _raw(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _special_prefix(self) -> tuple[int, ...]:
        """Ids the tokenizer adds before a text (BOS), found by encoding with and without them."""
        probe = "Some text."
        with_ = list(self.tokenizer(probe)["input_ids"])
        bare = self._raw([probe])[0]
        for i in range(len(with_) - len(bare) + 1):
            if with_[i : i + len(bare)] == bare:
                return tuple(with_[:i])
        return ()

    def _consistent(self) -> bool:
        firsts = self._raw([a for a, _ in PROBES])
        wholes = self._raw([a + b for a, b in PROBES])
        seconds = self.encode([b for _, b in PROBES])
        return all(w == f + s for w, f, s in zip(wholes, firsts, seconds))

    def encode(self, pieces: Sequence[str]) -> list[list[int]]:
        """Token ids of pieces that follow other text (each starts with a space)."""
        if not pieces:
            return []
        if not self.anchored:
            return self._raw(pieces)
        anchor = self._raw([ANCHOR])[0]
        out = []
        for ids in self._raw([ANCHOR + p for p in pieces]):
            if ids[: len(anchor)] != anchor:
                raise ValueError(f"tokenizer merges the anchor {ANCHOR!r} with the text after it")
            out.append(ids[len(anchor) :])
        return out

    def table(self, haystack: str) -> _WordTable:
        """Word table of a haystack kind (built once per tokenizer)."""
        if haystack not in self._tables:
            words = [" " + w for w in _haystack_words(haystack)]
            self._tables[haystack] = _WordTable(words, self.encode(words))
        return self._tables[haystack]


def _haystack_words(haystack: str) -> list[str]:
    if haystack == "words":
        return list(HAYSTACK_WORDS)
    sentences = NOISE_SENTENCES if haystack == "noise" else NOISE_SENTENCES[:1]
    return [w for s in sentences for w in s.split()]


_VIEWS: dict[int, TextTokenizer] = {}


def text_tokenizer(tokenizer: Any) -> TextTokenizer:
    """The (cached) ``TextTokenizer`` of a transformers tokenizer object."""
    view = _VIEWS.get(id(tokenizer))
    if view is None or view.tokenizer is not tokenizer:
        view = _VIEWS[id(tokenizer)] = TextTokenizer(tokenizer)
    return view


class _Stream:
    """The haystack's word order: cyclic for ``noise`` / ``constant``, seeded random for ``words``."""

    def __init__(self, table: _WordTable, haystack: str, seed: int) -> None:
        self.table, self.cyclic = table, haystack != "words"
        self.rng = np.random.default_rng(seed)
        self.drawn = np.zeros(0, dtype=np.int64)
        usable = np.flatnonzero(table.lens <= MAX_WORD_TOKENS)
        if not len(usable):
            raise ValueError(f"every haystack word is longer than {MAX_WORD_TOKENS} tokens for this tokenizer")
        self.usable = usable

    def words(self, a: int, b: int) -> np.ndarray:
        """Word indices at stream positions [a, b)."""
        if self.cyclic:
            return np.arange(a, b) % len(self.table.lens)
        while len(self.drawn) < b:
            chunk = self.usable[self.rng.integers(0, len(self.usable), size=_STREAM_CHUNK)]
            self.drawn = np.concatenate([self.drawn, chunk])
        return self.drawn[a:b]

    def take(self, pos: int, budget: int) -> tuple[list[np.ndarray], int]:
        """Words from ``pos`` whose tokens total ``budget`` (or as near below as possible):
        whole words by cumulative sum, then the next words that fit the gap (skipping the ones
        that do not), then the shortest words of the table. Returns (index arrays, new pos)."""
        if budget <= 0:
            return [], pos
        idx = self.words(pos, pos + budget)  # every word has >= 1 token, so this is enough
        cum = np.cumsum(self.table.lens[idx])
        k = int(np.searchsorted(cum, budget, side="right"))
        chosen = [idx[:k]]
        gap = budget - (int(cum[k - 1]) if k else 0)
        pos += k
        while gap > 0:
            ahead = self.words(pos, pos + LOOKAHEAD)
            fits = np.flatnonzero(self.table.lens[ahead] <= gap)
            if len(fits):
                j = int(fits[0])
                chosen.append(ahead[j : j + 1])
                pos += j + 1
            else:
                short = self.table.by_length[self.table.lens[self.table.by_length] <= gap]
                if not len(short):
                    break  # no word fits: this part ends `gap` tokens short (the stated tolerance)
                chosen.append(short[:1])
            gap -= int(self.table.lens[chosen[-1][0]])
        return chosen, pos


# --------------------------------------------------------------------------- layout
@dataclass
class _Piece:
    text: str
    kind: str  # "head" (starts the text), "fixed", "answer", "filler"
    share: float = 0.0


def _layout(sample: Sample, tpl: Template, values: str, chat: tuple[str, str] | None) -> list[_Piece]:
    """The sample's pieces in order. ``chat = (user_prefix, assistant_prefix)`` moves every
    question into the user turn and the answers into the assistant turn."""
    noun, nouns = NOUNS[values]
    keyless = any(isinstance(p, Needle) and not p.key for p in sample.parts)
    head = tpl.number_header if keyless else tpl.header.format(nouns=nouns)
    pieces = [_Piece((chat[0] if chat else "") + head, "head")]
    queries: list[Query] = []
    for part in sample.parts:
        if isinstance(part, Filler):
            if chat and queries:
                raise ValueError("the chat template needs every query at the end of the sample, "
                                 f"but task '{sample.task}' has haystack after a query")
            pieces.append(_Piece("", "filler", part.share))
        elif isinstance(part, Needle):
            if chat and queries:
                raise ValueError(f"the chat template needs every query at the end of the sample ('{sample.task}')")
            value = value_text(part.value, part.space, values)
            text = (tpl.number_needle.format(value=value) if not part.key
                    else tpl.needle.format(nouns=nouns, key=key_text(part.key), value=value))
            pieces.append(_Piece(" " + text, "fixed"))
        else:
            queries.append(part)
            if not chat:
                question, prefix = _question(part, tpl, noun)
                pieces += [_Piece(f" {question} {prefix}", "fixed"),
                           _Piece(" " + value_text(part.answer, part.space, values), "answer")]
    if chat:
        questions = " ".join(_question(q, tpl, noun)[0] for q in queries)
        pieces.append(_Piece(" " + questions, "fixed"))
        for i, q in enumerate(queries):
            prefix = _question(q, tpl, noun)[1]
            pieces += [_Piece(chat[1] + prefix if i == 0 else " " + prefix, "fixed"),
                       _Piece(" " + value_text(q.answer, q.space, values), "answer")]
    return pieces


def _question(q: Query, tpl: Template, noun: str) -> tuple[str, str]:
    if not q.key:
        return tpl.number_question, tpl.number_answer_prefix
    key = key_text(q.key)
    return tpl.question.format(noun=noun, key=key), tpl.answer_prefix.format(noun=noun, key=key)


def chat_wrappers(tokenizer: Any) -> tuple[str, str]:
    """(text before the user's message, text between it and the assistant's reply) of the
    tokenizer's chat template; ValueError when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    marker = "\x00EVALKIT\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(marker) != 1:
        raise ValueError("the chat template does not place the user message exactly once")
    before, after = text.split(marker)
    return before, after


# --------------------------------------------------------------------------- the format
@FORMATS.register("text")
def render_text(
    sample: Sample,
    context_length: int,
    tokenizer: Any = None,
    filler: str = "random",
    haystack: str = "auto",
    values: str = "numbers",
    template: str = "ruler",
    chat: bool = False,
) -> Rendered:
    """Render ``sample`` as text tokenised by ``tokenizer`` (a transformers tokenizer), with the
    haystack fitted so the sequence (prompt, queries, answers) has ``context_length`` tokens
    (see the module docstring for the tolerance). ``OverLengthError`` if the fixed parts alone
    are longer. Deterministic: the random-words haystack is drawn from ``sample.seed``."""
    if tokenizer is None:
        raise ValueError("the text format needs the model's tokenizer (this model has none; use format: tokens)")
    if sample.task in TASK_RENDERERS:
        return TASK_RENDERERS[sample.task](sample, context_length, tokenizer, chat_wrappers(tokenizer) if chat else None)
    opts = resolve_text_options({"haystack": haystack, "values": values, "template": template}, filler)
    check_text_options(opts)
    tok = text_tokenizer(tokenizer)
    wrappers = chat_wrappers(tokenizer) if chat else None
    pieces = _layout(sample, TEMPLATES[opts["template"]], opts["values"], wrappers)

    fixed = [p for p in pieces if p.kind != "filler"]
    head_ids = tok._raw([fixed[0].text])[0]
    ids_of = [head_ids, *tok.encode([p.text for p in fixed[1:]])]
    prefix = list(tok.prefix)
    if prefix and head_ids[: len(prefix)] == prefix:  # a chat template that writes the BOS itself
        prefix = []
    n_fixed = len(prefix) + sum(len(x) for x in ids_of)
    budget = context_length - n_fixed
    if budget < 0:
        raise OverLengthError(f"context length {context_length} is too short for this sample: its text without "
                              f"haystack already has {n_fixed} tokens of this tokenizer")
    fillers = [p for p in pieces if p.kind == "filler"]
    if not fillers and budget:
        raise ValueError(f"sample has no haystack to pad it to {context_length} tokens; it has {n_fixed}")
    sizes = split_budget(budget, [p.share for p in fillers]) if fillers else []

    table = tok.table(opts["haystack"])
    stream = _Stream(table, opts["haystack"], sample.seed)
    ids: list[int] = list(prefix)
    spans: list[tuple[int, int]] = []
    text: list[str] = []
    summary: list[str] = []
    prompt_text = prompt_summary = None
    fixed_ids, sizes_it, pos = iter(ids_of), iter(sizes), 0
    for p in pieces:
        if p.kind == "filler":
            chosen, pos = stream.take(pos, next(sizes_it))
            words = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
            got = table.gather(words)
            ids.extend(got.tolist())
            text.append("".join(table.words[w] for w in words))
            summary.append(f" …[{len(got)} haystack tokens]…" if len(got) else "")
            continue
        if p.kind == "answer":
            if prompt_text is None:
                prompt_text, prompt_summary = "".join(text), "".join(summary)
            spans.append((len(ids), len(ids) + len(piece_ids := next(fixed_ids))))
            ids.extend(piece_ids)
        else:
            ids.extend(next(fixed_ids))
        text.append(p.text)
        summary.append(p.text)
    answers = tuple(p.text[1:] for p in pieces if p.kind == "answer")
    if any(s == e for s, e in spans):
        raise ValueError("an answer tokenised to zero tokens")
    return Rendered(input_ids=tuple(ids), answer_spans=tuple(spans), format="text", answers_text=answers,
                    prompt_text=prompt_text or "", summary=prompt_summary or "")


def decoder(tokenizer: Any) -> Callable[[Sequence[int]], str]:
    """ids → text for records (``evalkit show``): special tokens dropped."""
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)


__all__ = [
    "FILLER_TO_HAYSTACK",
    "KEY_WORDS",
    "NOISE_SENTENCES",
    "NUMBERS",
    "TEMPLATES",
    "TEXT_OPTIONS",
    "UUIDS",
    "VALUE_WORDS",
    "TextTokenizer",
    "chat_wrappers",
    "check_text_options",
    "key_text",
    "render_text",
    "resolve_text_options",
    "text_tokenizer",
    "value_text",
]
