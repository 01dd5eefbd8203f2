"""RULER's needle-in-a-haystack suite (Hsieh et al., 2024) as the ``ruler_niah`` task.

The eight presets in ``tasks/ruler/`` (``niah_single_1..3``, ``niah_multikey_1..3``,
``niah_multivalue``, ``niah_multiquery``) set this task's params the way RULER's (and lm-eval's
``lm_eval/tasks/ruler``) configs do. What is RULER's, reproduced here (docs/ruler.md):

- the prompt: RULER's NIAH template (singular wording when one answer is asked for), the needle
  sentence "One of the special magic {numbers|uuids|words} for {key} is: {value}.", the haystack
  units joined by newlines (noise / distractor needles) or spaces (essay), then the answer prefix
  ("The special magic number for {key} mentioned in the provided text is");
- keys and values: adjective-noun words, 7-digit numbers, UUID4s; needles in RULER's fixed
  shuffled order (``random.Random(42)``), queried keys drawn as RULER draws them;
- needle positions: uniform over haystack units (noise, distractors) or RULER's 40 depths
  (essay);
- the length rule: the number of haystack units is RULER's incremental search (steps of 5, 25 or
  500 units) for the largest haystack with tokens(prompt incl. answer prefix) +
  ``tokens_to_generate`` <= the context length, measured with the model's tokenizer; each sample
  then shrinks by one step until it fits.

What is not: the essay haystack is a shipped public-domain text (``data/ruler_essay.txt``), NOT
RULER's Paul Graham essays (which lm-eval downloads at run time); the word lists are evalkit's
own (RULER's come from ``wonderwords``); random draws use the sample's seed, not RULER's global
``random`` state. The sample's structure (needles at their depths, queries) is also given as
``Filler`` / ``Needle`` / ``Query`` parts, so the ``tokens`` format renders a synthetic analogue
for native models; the ``text`` format renders RULER's text through :func:`render_ruler`.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from evalkit.tasks.base import (
    Filler,
    Needle,
    OverLengthError,
    Part,
    Query,
    Rendered,
    Sample,
    Task,
    register_task,
)
from evalkit.tasks.text import TASK_RENDERERS

DATA = Path(__file__).parent / "data"
HAYSTACKS = ("repeat", "needle", "essay")  # RULER's names: noise, distractor needles, essay
KINDS = ("words", "numbers", "uuids")
LENGTH_RULES = ("ruler", "lm_eval")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)))  # RULER's essay depths
NEEDLE_SHUFFLE_SEED = 42  # RULER shuffles the needle list with random.Random(42): a fixed order
PROBE_SEED = 42  # the sample RULER's length search measures (its "first example")


def _words(name: str) -> tuple[str, ...]:
    lines = (DATA / name).read_text().splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


ADJECTIVES = _words("ruler_adjectives.txt")
NOUNS = _words("ruler_nouns.txt")
WORDS = tuple(sorted({f"{a}-{n}" for a in ADJECTIVES for n in NOUNS}))


@cache
def essay_words() -> tuple[str, ...]:
    """The shipped essay haystack as whitespace-separated words (RULER: Paul Graham's essays)."""
    text = (DATA / "ruler_essay.txt").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return tuple(re.sub(r"\s+", " ", body).strip().split(" "))


def random_value(rnd: random.Random, kind: str) -> str:
    """One key or value as RULER draws it: an adjective-noun word, a 7-digit number or a UUID4."""
    if kind == "numbers":
        return str(rnd.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rnd.choice(WORDS)
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


@dataclass(frozen=True, kw_only=True)
class RulerNiahParams:
    haystack: str = "repeat"  # repeat (noise) | needle (distractor needles) | essay (shipped text)
    type_needle_k: str = "words"  # words | numbers | uuids
    type_needle_v: str = "numbers"  # words | numbers | uuids
    num_needle_k: int = 1  # keys with needles
    num_needle_v: int = 1  # values (needles) per key
    num_needle_q: int = 1  # keys queried (num_needle_k is raised to at least this, as in RULER)
    tokens_to_generate: int = 128  # RULER's generation budget, reserved by the length rule
    # ruler: the answer prefix counts towards the length (RULER); lm_eval: it does not (lm-eval's port)
    length_rule: str = "ruler"


@register_task
class RulerNiahTask(Task):
    """RULER's NIAH sample: keys, values, needle depths and queries; the text is fitted at render time."""

    name = "ruler_niah"
    version = 1
    Params = RulerNiahParams
    axes = ("haystack", "num_needle_k", "num_needle_v", "num_needle_q")
    secondary: ClassVar[dict[str, str]] = {"answers_found": "queries"}  # RULER's string_match_all: fraction of answers found
    description = "RULER's needle-in-a-haystack variants (noise, distractor-needle and essay haystacks)."
    # greedy scoring generates this many tokens past each answer: at least RULER's 128-token budget
    greedy_extra_tokens = 128
    # the report's effective length: longest length scoring at least this (RULER's threshold, 85.6 =
    # Llama-2-7B's average score); ``evalkit report --threshold`` overrides it
    effective_length_threshold = 0.856

    params: RulerNiahParams

    def validate(self) -> None:
        p = self.params
        for field, value, allowed in (("haystack", p.haystack, HAYSTACKS), ("type_needle_k", p.type_needle_k, KINDS),
                                      ("type_needle_v", p.type_needle_v, KINDS)):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {value!r}")
        if p.length_rule not in LENGTH_RULES:
            raise ValueError(f"length_rule must be one of {', '.join(LENGTH_RULES)}, got {p.length_rule!r}")
        for field in ("num_needle_k", "num_needle_v", "num_needle_q", "tokens_to_generate"):
            self.check_range(field, getattr(p, field), 1, 1024)

    def sample(self, context_length: int, rng: np.random.Generator, index: int) -> Sample:
        """RULER's draws (keys, values, fixed needle shuffle, queried keys, needle depths) from
        ``rng``; the parts mirror them for the tokens format, ``meta`` carries the text."""
        p = self.params
        seed = int(rng.integers(0, 2**63))
        rnd = random.Random(seed)
        n_k = max(p.num_needle_k, p.num_needle_q)
        keys = [random_value(rnd, p.type_needle_k) for _ in range(n_k)]
        values = [[random_value(rnd, p.type_needle_v) for _ in range(p.num_needle_v)] for _ in range(n_k)]
        needles = [(k, v) for k in range(n_k) for v in range(p.num_needle_v)]  # (key index, value index)
        random.Random(NEEDLE_SHUFFLE_SEED).shuffle(needles)
        if p.haystack == "essay":
            depths = sorted(d / 100 for d in rnd.sample(DEPTHS, len(needles)))
        else:
            depths = sorted(rnd.random() for _ in needles)
        queried = rnd.sample(range(n_k), p.num_needle_q)

        key_ids = self.distinct_keys(rng, n_k, 2)
        value_ids = [self.values(rng, p.num_needle_v, 2) for _ in range(n_k)]
        parts: list[Part] = []
        previous = 0.0
        for (k, v), depth in zip(needles, depths):
            parts += [Filler(depth - previous), Needle(key_ids[k], value_ids[k][v])]
            previous = depth
        parts.append(Filler(1.0 - previous))
        parts += [Query(key_ids[k], value_ids[k][v]) for k in queried for v in range(p.num_needle_v)]
        return Sample(task=self.name, index=index, seed=seed, parts=tuple(parts), meta=(
            ("haystack", p.haystack), ("num_needle_k", p.num_needle_k), ("num_needle_v", p.num_needle_v),
            ("num_needle_q", p.num_needle_q), ("type_needle_k", p.type_needle_k),
            ("type_needle_v", p.type_needle_v), ("tokens_to_generate", p.tokens_to_generate),
            ("length_rule", p.length_rule),
            ("ruler_needles", tuple(NEEDLE.format(type_needle_v=p.type_needle_v, key=keys[k], value=values[k][v])
                                    for k, v in needles)),
            ("ruler_depths", tuple(depths)),
            ("ruler_queries", tuple(keys[k] for k in queried)),
            ("ruler_answers", tuple(a for k in queried for a in values[k])),
        ))


# --------------------------------------------------------------------------- the text
def _increment(haystack: str, context_length: int) -> int:
    """RULER's search step in haystack units."""
    if haystack == "essay":
        return 500
    return 25 if context_length >= 4096 else 5


def ruler_text(meta: dict[str, Any], seed: int, num_haystack: int) -> tuple[str, str]:
    """(input, answer prefix) of a sample with ``num_haystack`` haystack units, as RULER writes them."""
    needles: tuple[str, ...] = meta["ruler_needles"]
    depths: tuple[float, ...] = meta["ruler_depths"]
    haystack, kind_k, kind_v = meta["haystack"], meta["type_needle_k"], meta["type_needle_v"]
    if haystack == "essay":
        words = essay_words()
        text = " ".join(words[i % len(words)] for i in range(num_haystack))
        sents = re.split(r"(?<=[.!?])\s+", text.strip())
        cuts = [0] + [int(len(sents) * d) for d in depths] + [len(sents)]
        chunks: list[str] = []
        for i in range(1, len(cuts)):
            chunks.append(" ".join(sents[cuts[i - 1] : cuts[i]]))
            if i - 1 < len(needles):
                chunks.append(needles[i - 1])
        context = " ".join(chunks)
    else:
        if haystack == "repeat":
            units = [NOISE] * num_haystack
        else:  # distractor needles: other keys with other values, drawn in a fixed order from the seed
            rnd = random.Random(seed ^ 0x5EED)
            units = [NEEDLE.format(type_needle_v=kind_v, key=random_value(rnd, kind_k),
                                   value=random_value(rnd, kind_v)) for _ in range(num_haystack)]
        positions = sorted((int(d * num_haystack) for d in depths), reverse=True)  # RULER: uniform unit index
        for pos, needle in zip(positions, reversed(needles)):
            units.insert(pos, needle)
        context = "\n".join(units)

    queries: tuple[str, ...] = meta["ruler_queries"]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, noun = TEMPLATE, kind_v
    single = len(meta["ruler_answers"]) == 1
    if single:  # RULER's singular wording
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        template = template.replace("answers", "answer")
        noun = kind_v[:-1]
    prefix = (f"The special magic {kind_v[:-1]} for {query} mentioned in the provided text is" if single
              else f"The special magic {kind_v} for {query} mentioned in the provided text are")
    return template.format(type_needle_v=noun, context=context, query=query), prefix


_FITTED: dict[tuple[Any, ...], int] = {}


def _prompt(meta: dict[str, Any], seed: int, n: int, chat: tuple[str, str] | None) -> str:
    text, prefix = ruler_text(meta, seed, n)
    return (chat[0] + text + chat[1] + prefix) if chat else text + " " + prefix


def _counted(meta: dict[str, Any], seed: int, n: int, chat: tuple[str, str] | None) -> str:
    """The text the length rule counts: the prompt with its answer prefix (RULER) or without (lm-eval)."""
    if meta["length_rule"] == "ruler":
        return _prompt(meta, seed, n, chat) + " "
    text = ruler_text(meta, seed, n)[0]
    return chat[0] + text if chat else text


def fitted_haystack(meta: dict[str, Any], context_length: int, tokenizer: Any,
                    chat: tuple[str, str] | None = None) -> int:
    """RULER's search for the haystack size at ``context_length``: grow by the step while
    tokens(prompt + answers) + tokens_to_generate < the length, on a fixed probe sample; step
    back once it is over. Cached per tokenizer, task params and length."""
    key = (id(tokenizer), context_length, chat, *(meta[k] for k in (
        "haystack", "type_needle_k", "type_needle_v", "num_needle_k", "num_needle_v", "num_needle_q",
        "tokens_to_generate", "length_rule")))
    if key in _FITTED:
        return _FITTED[key]
    ttg, step = meta["tokens_to_generate"], _increment(meta["haystack"], context_length)
    probe = RulerNiahTask(RulerNiahParams(**{k: meta[k] for k in (
        "haystack", "type_needle_k", "type_needle_v", "num_needle_k", "num_needle_v", "num_needle_q",
        "tokens_to_generate", "length_rule")})).sample(context_length, np.random.default_rng(PROBE_SEED), 0)
    pm = dict(probe.meta)
    n_needles = len(pm["ruler_needles"])
    n = max(step, n_needles)
    total = 0
    while total + ttg < context_length:
        text = _counted(pm, probe.seed, n, chat) + " ".join(pm["ruler_answers"])
        total = len(tokenizer(text)["input_ids"])
        if total + ttg > context_length:
            n -= step
            break
        if n > context_length:
            raise ValueError(f"RULER's haystack grew past {context_length} units without reaching the length")
        n += step
    _FITTED[key] = n = max(n, n_needles)
    return n


def render_ruler(sample: Sample, context_length: int, tokenizer: Any, chat: tuple[str, str] | None = None
                 ) -> Rendered:
    """RULER's prompt for ``sample`` fitted to ``context_length`` with RULER's rule, then each
    answer (teacher-forced; greedy scoring generates from the answer prefix instead). The
    sequence is prompt (answer prefix included, as RULER counts it) + answers, so its length is
    at most ``context_length - tokens_to_generate + answer tokens``."""
    from evalkit.tasks.text import text_tokenizer

    meta = dict(sample.meta)
    ttg, step = meta["tokens_to_generate"], _increment(meta["haystack"], context_length)
    tok = text_tokenizer(tokenizer)
    n = fitted_haystack(meta, context_length, tokenizer, chat)
    while True:
        if n <= 0:
            raise OverLengthError(f"context length {context_length} is too short for this sample: its prompt "
                                  f"without haystack plus {ttg} tokens to generate does not fit")
        prompt = _prompt(meta, sample.seed, n, chat)
        ids = list(tokenizer(prompt)["input_ids"])
        counted = len(ids) if meta["length_rule"] == "ruler" else len(tokenizer(_counted(meta, sample.seed, n, chat))[
            "input_ids"])
        if counted + ttg <= context_length:
            break
        n -= step
    answers: tuple[str, ...] = meta["ruler_answers"]
    pieces = [" " + answers[0]]
    for a in answers[1:]:
        pieces += [",", " " + a]
    spans = []
    for i, piece_ids in enumerate(tok.encode(pieces)):
        if i % 2 == 0:
            spans.append((len(ids), len(ids) + len(piece_ids)))
        ids.extend(piece_ids)
    return Rendered(input_ids=tuple(ids), answer_spans=tuple(spans), format="text", answers_text=answers,
                    prompt_text=prompt, summary=_summary(prompt, meta))


TASK_RENDERERS[RulerNiahTask.name] = render_ruler


def _summary(prompt: str, meta: dict[str, Any]) -> str:
    """The prompt with runs of haystack collapsed (for ``evalkit show``)."""
    needles = set(meta["ruler_needles"])
    out: list[str] = []
    for line in prompt.split("\n"):
        if line in needles or len(line) < 200 and line != NOISE and not line.startswith("One of the special"):
            out.append(line)
        elif not out or not out[-1].startswith("…["):
            out.append("…[haystack]…")
    return "\n".join(out)


__all__ = ["RulerNiahParams", "RulerNiahTask", "fitted_haystack", "render_ruler", "ruler_text"]
