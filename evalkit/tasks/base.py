"""What a task plugin is: a seeded generator of structured samples.

A ``Sample`` is a sequence of parts — filler, needles (key → value facts) and queries — not a
string, so the same sample renders as synthetic tokens (``evalkit.tasks.tokens``) or, later, as
text. Lengths are a property of the *rendering*: filler parts carry a *share* of whatever budget is
left once the needles and queries are placed, so each format can hit the requested context length
exactly in its own units.

Plugins subclass ``Task``, declare a frozen ``Params`` dataclass, which of its fields are sweep
``axes``, and register with ``@register_task``. ``Task.sample`` must be a pure function of
(params, context length, rng, index): the runner seeds ``rng`` from the cell key and the index.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from evalkit.registry import Registry

# Size of the abstract symbol spaces tasks draw from; every format must be able to render them.
KEY_SPACE = 128
VALUE_SPACE = 128

Space = Literal["value", "digit"]


@dataclass(frozen=True)
class Filler:
    """Haystack: ``share`` of the filler budget (shares of one sample sum to 1)."""

    share: float


@dataclass(frozen=True)
class Needle:
    """A fact to recall: ``key`` (ids in KEY_SPACE, may be empty) → ``value``.

    ``space`` says what the value ids are: ``value`` (ids in VALUE_SPACE) or ``digit`` (0-9).
    """

    key: tuple[int, ...]
    value: tuple[int, ...]
    space: Space = "value"


@dataclass(frozen=True)
class Query:
    """Ask for the value of ``key``; ``answer`` is scored (teacher-forced or generated)."""

    key: tuple[int, ...]
    answer: tuple[int, ...]
    space: Space = "value"


Part = Filler | Needle | Query


@dataclass(frozen=True)
class Sample:
    """One structured sample; ``seed`` drives whatever a format draws at render time (filler)."""

    task: str
    index: int
    seed: int
    parts: tuple[Part, ...]
    meta: tuple[tuple[str, Any], ...] = ()  # e.g. (("depth", 0.5),) — plain, hashable

    @property
    def queries(self) -> tuple[Query, ...]:
        return tuple(p for p in self.parts if isinstance(p, Query))


class OverLengthError(ValueError):
    """The fixed parts of a sample (needles, queries, answers, template) alone exceed the
    requested context length. Formats raise it; the runner applies the over-length policy
    (``error`` fails, ``skip`` counts the sample as skipped), never truncating."""


@dataclass(frozen=True)
class Rendered:
    """A sample as model input: ``input_ids`` holds prompt, queries and (teacher-forced) answers.

    ``context_length == len(input_ids)``: the whole sequence the model processes (the achieved
    length; the ``tokens`` format always hits the requested one, ``text`` states its tolerance).
    ``answer_spans[i] = (start, end)``: positions of query i's answer tokens; the model predicts
    token ``p`` from the logits at ``p - 1``. ``prompt_len`` is the start of the first answer.

    ``targets``, when not empty, holds each query's gold answer tokens and ``input_ids`` holds
    placeholders at the answer spans instead: the answers are *hidden* (Zoology's MQAR, where a
    query is ``key 0`` and the value is only a label), so no answer is ever model input. ``gold``
    gives the answer tokens either way.

    Text renderings also carry ``answers_text`` (each query's gold answer string, for RULER-style
    substring scoring of generations), ``prompt_text`` (the exact text of everything before the
    first answer, for harnesses that tokenise it themselves) and ``summary`` (that prompt with the
    haystack collapsed, for ``evalkit show``). They stay empty for ``tokens``.
    """

    input_ids: tuple[int, ...]
    answer_spans: tuple[tuple[int, int], ...]
    format: str
    answers_text: tuple[str, ...] = ()
    prompt_text: str = ""
    summary: str = ""
    targets: tuple[tuple[int, ...], ...] = ()

    @property
    def gold(self) -> tuple[tuple[int, ...], ...]:
        """Each query's gold answer tokens: ``targets`` if the answers are hidden, else the
        tokens at the answer spans."""
        if self.targets:
            return self.targets
        return tuple(tuple(self.input_ids[s:e]) for s, e in self.answer_spans)

    @property
    def hidden(self) -> bool:
        """Whether the answers are hidden (placeholders in ``input_ids``, gold in ``targets``)."""
        return bool(self.targets)

    @property
    def context_length(self) -> int:
        return len(self.input_ids)

    @property
    def prompt_len(self) -> int:
        return self.answer_spans[0][0]


class Task:
    """Base class of task plugins. Subclasses set the class variables and ``sample``."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump whenever the samples a seed produces change
    Params: ClassVar[type]  # a frozen dataclass with a default for every field
    axes: ClassVar[tuple[str, ...]] = ()  # Params fields a spec may sweep with a list
    # secondary metrics: name → "queries" (fraction of answers right) or "tokens" (fraction of
    # answer tokens right); both teacher-forced.
    secondary: ClassVar[dict[str, str]] = {}
    description: ClassVar[str] = ""

    def __init__(self, params: Any) -> None:
        self.params = params

    def validate(self) -> None:
        """Raise ValueError naming the field for out-of-range params (spec.py adds file/line)."""

    def sample(self, context_length: int, rng: np.random.Generator, index: int) -> Sample:
        raise NotImplementedError

    # helpers for plugins -------------------------------------------------------------------
    @staticmethod
    def check_range(field: str, value: float, lo: float, hi: float | None = None, note: str = "") -> None:
        """Raise ValueError naming ``field`` unless ``lo <= value`` (and ``value <= hi``)."""
        if value < lo or (hi is not None and value > hi):
            want = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            raise ValueError(f"{field} must be {want}{note}, got {value!r}")

    def check_lengths(self) -> None:
        """The ``key_len`` / ``value_len`` checks most plugins share."""
        self.check_range("key_len", self.params.key_len, 1)
        self.check_range("value_len", self.params.value_len, 1)

    @staticmethod
    def check_key_count(field: str, n: int, key_len: int) -> None:
        """``n`` distinct keys of ``key_len`` ids must exist."""
        Task.check_range(field, n, 1, KEY_SPACE**key_len, f" (distinct keys of length {key_len})")

    @staticmethod
    def distinct_keys(rng: np.random.Generator, n: int, key_len: int) -> list[tuple[int, ...]]:
        """``n`` distinct keys of ``key_len`` ids each."""
        if n > KEY_SPACE**key_len:
            raise ValueError(f"cannot draw {n} distinct keys of length {key_len}")
        seen: set[tuple[int, ...]] = set()
        out: list[tuple[int, ...]] = []
        while len(out) < n:
            k = tuple(int(x) for x in rng.integers(0, KEY_SPACE, size=key_len))
            if k not in seen:
                seen.add(k)
                out.append(k)
        return out

    @staticmethod
    def values(rng: np.random.Generator, n: int, value_len: int) -> list[tuple[int, ...]]:
        return [tuple(int(x) for x in rng.integers(0, VALUE_SPACE, size=value_len)) for _ in range(n)]


TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a Task subclass under ``cls.name``."""
    assert dataclasses.is_dataclass(cls.Params), f"{cls.__name__}.Params must be a dataclass"
    return TASKS.register(cls.name)(cls)
