"""Scoring: teacher-forced exact match (default) and greedy generation.

Teacher forcing: with the answers in the sequence, "greedy decoding reproduces answer i exactly"
holds iff the argmax at every answer position equals the next answer token. One forward pass
per batch replaces the decode loop. For the whole answer of a sample (every query right) the two
modes agree exactly (tested); per-query and per-token fractions are teacher-forced metrics, since
under generation an early wrong answer changes the later context.

Text renderings (``Rendered.answers_text``) scored from generations are scored RULER-style: a query
is right when its gold answer string is a substring of the decoded generation (``string_match_all``
averages that over queries; the primary metric needs all of them). Generation then runs
``extra`` tokens past the answer's length, as a free-form harness would. Teacher-forced right
implies generated right (the first answer tokens decode to the answer); the converse can fail
(the model says the number in other tokens), which is why the modes are labelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evalkit.tasks.base import Rendered

if TYPE_CHECKING:
    from evalkit.models.base import Adapter

SCORING_MODES = ("teacher_forced", "greedy")
PAD_ID = 0  # right padding of teacher-forced batches: causal models never see it from a real position


@dataclass(frozen=True)
class Prediction:
    """Predicted tokens for each answer span of one rendered sample, and for text generations
    the decoded text of each (answer tokens plus the extra tokens generated after them)."""

    answers: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...] | None = None


def predict_teacher_forced(adapter: Adapter, batch: Sequence[Rendered]) -> list[Prediction]:
    """One forward pass for a batch; samples shorter than the longest (text renderings may
    differ by a few tokens) are padded on the right, which no real position attends to."""
    import torch

    width = max(len(r.input_ids) for r in batch)
    ids = torch.tensor([list(r.input_ids) + [PAD_ID] * (width - len(r.input_ids)) for r in batch],
                       dtype=torch.long)  # (B, L)
    # the token at p is predicted from the logits at p - 1
    pos = [[p - 1 for s, e in r.answer_spans for p in range(s, e)] for r in batch]
    width = max(len(p) for p in pos)
    positions = torch.tensor([p + [p[-1]] * (width - len(p)) for p in pos], dtype=torch.long)  # (B, P)
    pred = adapter.predict(ids, positions).tolist()  # (B, P)
    out = []
    for r, row in zip(batch, pred):
        answers, i = [], 0
        for s, e in r.answer_spans:
            answers.append(tuple(row[i : i + e - s]))
            i += e - s
        out.append(Prediction(tuple(answers)))
    return out


def predict_greedy(adapter: Adapter, batch: Sequence[Rendered],
                   detok: Callable[[Sequence[int]], str] | None = None, extra: int = 0) -> list[Prediction]:
    """Generate each answer greedily; tokens between answers (later queries) are given.

    Samples whose answers sit at the same positions (so with equal-length prompts: no padding
    ever reaches a recurrent state) are generated together. With ``detok`` (text renderings)
    each generation runs ``extra`` tokens past the answer and is decoded for substring scoring."""
    groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for i, r in enumerate(batch):
        groups.setdefault(r.answer_spans, []).append(i)
    out: list[Prediction | None] = [None] * len(batch)
    for spans, idx in groups.items():
        for i, p in zip(idx, _greedy_same_spans(adapter, [batch[i] for i in idx], spans, detok, extra)):
            out[i] = p
    return [p for p in out if p is not None]


def _greedy_same_spans(adapter: Adapter, batch: Sequence[Rendered], spans: tuple[tuple[int, int], ...],
                       detok: Callable[[Sequence[int]], str] | None, extra: int) -> list[Prediction]:
    import torch

    ids = torch.tensor([r.input_ids for r in batch], dtype=torch.long)  # (B, L)
    answers: list[list[tuple[int, ...]]] = [[] for _ in batch]
    texts: list[list[str]] = [[] for _ in batch]
    for s, e in spans:
        new = adapter.generate(ids[:, :s], e - s + (extra if detok else 0))  # (B, e - s [+ extra])
        ids[:, s:e] = new[:, : e - s]
        for b, row in enumerate(new.tolist()):
            answers[b].append(tuple(row[: e - s]))
            if detok is not None:
                texts[b].append(detok(row))
    return [Prediction(tuple(a), tuple(t) if detok is not None else None) for a, t in zip(answers, texts)]


def expected(r: Rendered) -> tuple[tuple[int, ...], ...]:
    return r.gold


def score(r: Rendered, pred: Prediction, secondary: dict[str, str]) -> tuple[bool, dict[str, float]]:
    """Primary (every answer right) and the task's secondary metrics for one sample. An answer
    is right when its tokens are exact, or — for a text generation — when the gold answer string
    occurs in the generated text (RULER's ``string_match_all``)."""
    gold = expected(r)
    if pred.texts is not None and r.answers_text:
        per_query = [g in t for g, t in zip(r.answers_text, pred.texts)]
    else:
        per_query = [p == g for p, g in zip(pred.answers, gold)]
    tokens = [a == b for p, g in zip(pred.answers, gold) for a, b in zip(p, g)]
    scores: dict[str, float] = {}
    for name, kind in secondary.items():
        if kind == "queries":
            scores[name] = sum(per_query) / len(per_query)
        elif kind == "tokens":
            scores[name] = sum(tokens) / len(tokens)
        else:  # pragma: no cover - guarded by the task contract test
            raise ValueError(f"unknown secondary metric kind '{kind}'")
    return all(per_query), scores
