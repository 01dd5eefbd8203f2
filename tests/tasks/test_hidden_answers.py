"""``answers: hidden`` and ``queries: bare``: queries without their answers in the input and
without tags, so MQAR can be written as Zoology writes it (``key 0``).

With the answers shown (the default), every earlier answer is model input, so a model can score
H_P/P on all-pairs MQAR by answering "a value not answered yet" (docs/training.md). Hidden
answers put placeholders where the answers were and carry the answers as targets only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evalkit.errors import SpecError
from evalkit.models.native_adapter import NativeAdapter
from evalkit.runner import _sample_key, make_sample, plan, render
from evalkit.scoring import Prediction, predict_teacher_forced, score
from evalkit.spec import load_model_spec, load_task_spec
from evalkit.tasks import TASKS
from evalkit.tasks.tokens import DEFAULT_VOCAB as V
from evalkit.tasks.tokens import render_tokens
from evalkit.train import _targets, make_config, recipe_hash, train_batch
from testutil import write

MQAR = "task: assoc_recall\nlengths: [64]\nsamples: 4\nparams: {num_pairs: 6, value_len: 2}\n"


def mqar_sample(seed: int = 0):
    task = TASKS.get("assoc_recall")(TASKS.get("assoc_recall").Params(num_pairs=6, value_len=2))
    return task.sample(64, np.random.default_rng(seed), 0)


@pytest.mark.parametrize("seed", range(5))
def test_hidden_differs_from_shown_only_at_the_answers(seed: int) -> None:
    sample = mqar_sample(seed)
    shown, hidden = render_tokens(sample, 64), render_tokens(sample, 64, answers="hidden")
    assert hidden.context_length == shown.context_length == 64
    assert hidden.answer_spans == shown.answer_spans and not shown.hidden and hidden.hidden
    at_answers = {p for s, e in shown.answer_spans for p in range(s, e)}
    for p, (a, b) in enumerate(zip(shown.input_ids, hidden.input_ids)):
        assert (b == V.PAD) if p in at_answers else (a == b)
    assert hidden.gold == shown.gold == tuple(q.answer and tuple(V.value(v) for v in q.answer) for q in sample.queries)
    # no answer is model input: value tokens occur only in the pairs at the start
    values = [t for t in hidden.input_ids if V.VALUE0 <= t < V.FILLER0]
    assert len(values) == 6 * 2


def test_unknown_answers_mode() -> None:
    with pytest.raises(ValueError, match="unknown answers mode 'hiden'; did you mean 'hidden'"):
        render_tokens(mqar_sample(), 64, answers="hiden")
    with pytest.raises(ValueError, match="unknown query style 'bear'; did you mean 'bare'"):
        render_tokens(mqar_sample(), 64, queries="bear")


def test_bare_queries_are_zoologys_key_0() -> None:
    sample = mqar_sample(3)
    r = render_tokens(sample, 64, answers="hidden", queries="bare")
    tagged = render_tokens(sample, 64, answers="hidden")
    assert r.context_length == 64 and r.gold == tagged.gold
    assert V.QUERY not in r.input_ids and V.ANSWER not in r.input_ids
    for (s, e), q in zip(r.answer_spans, sample.queries):
        # key then the placeholder answer: the first answer token is predicted at the key's last token
        assert list(r.input_ids[s - len(q.key) : e]) == [V.key(k) for k in q.key] + [V.PAD] * (e - s)
    # two tokens fewer per query than tagged, given to the filler
    n_filler = sum(1 for t in r.input_ids if V.is_filler(t))
    assert n_filler == sum(1 for t in tagged.input_ids if V.is_filler(t)) + 2 * len(sample.queries)
    shown = render_tokens(sample, 64, queries="bare")
    assert [tuple(shown.input_ids[s:e]) for s, e in shown.answer_spans] == list(r.gold)


def test_bare_needs_keyed_queries(tmp_path: Path) -> None:
    p = write(tmp_path / "c.yaml", "task: copy_number\nqueries: bare\n")
    with pytest.raises(SpecError, match=r"c.yaml:2: field 'queries': queries: bare needs keyed queries"):
        load_task_spec(str(p))
    task = TASKS.get("copy_number")(TASKS.get("copy_number").Params())
    with pytest.raises(ValueError, match="queries: bare needs keyed queries"):
        render_tokens(task.sample(64, np.random.default_rng(0), 0), 64, queries="bare")


@pytest.mark.parametrize("text,line,needle", [
    ("answers: hiden\n", 2, "unknown answers mode 'hiden'; did you mean 'hidden'"),
    ("answers: hidden\nformat: text\n", 2, "answers: hidden needs the tokens format, not 'text'"),
    ("queries: bar\n", 2, "unknown query style 'bar'; did you mean 'bare'"),
    ("format: text\nqueries: bare\n", 3, "queries: bare needs the tokens format, not 'text'"),
])
def test_spec_errors(tmp_path: Path, text: str, line: int, needle: str) -> None:
    p = write(tmp_path / "bad.yaml", "task: assoc_recall\n" + text)
    with pytest.raises(SpecError) as e:
        load_task_spec(str(p))
    assert needle in str(e.value) and str(e.value).startswith(f"{p}:{line}:")


def test_default_keeps_keys_and_hashes_hidden_changes_them(tmp_path: Path, tiny_models) -> None:
    shown = load_task_spec(str(write(tmp_path / "s.yaml", MQAR)))
    hidden = load_task_spec(str(write(tmp_path / "h.yaml", MQAR + "answers: hidden\n")))
    model = load_model_spec(str(tiny_models["t-attn"]))
    (cs,), (ch,) = plan([shown], [model]), plan([hidden], [model])
    # the default's sample key is the one computed before the option existed (render = {filler})
    assert cs.sample_key == _sample_key(shown, dict(cs.params), "tokens", 64, 0)
    assert ch.sample_key != cs.sample_key and ch.cell_key != cs.cell_key
    assert dict(ch.render_opts) == {"filler": "random", "answers": "hidden"}
    bare = load_task_spec(str(write(tmp_path / "b.yaml", MQAR + "answers: hidden\nqueries: bare\n")))
    (cb,) = plan([bare], [model])
    assert dict(cb.render_opts) == {"filler": "random", "answers": "hidden", "queries": "bare"}
    assert len({cs.cell_key, ch.cell_key, cb.cell_key}) == 3
    # recipe hashes (cached trained variants) of specs without the options are unchanged
    assert not {"answers", "queries"} & set(shown.to_dict()) and hidden.to_dict()["answers"] == "hidden"
    cfg = make_config({"steps": 1})
    assert recipe_hash(model, [shown], cfg) != recipe_hash(model, [hidden], cfg)
    with pytest.raises(SpecError, match="answers: hidden cannot be scored by greedy"):
        plan([hidden], [model], scoring="greedy")


def test_scoring_reads_the_targets(tmp_path: Path, tiny_models) -> None:
    spec = load_task_spec(str(write(tmp_path / "h.yaml", MQAR + "answers: hidden\n")))
    (cell,) = plan([spec], [load_model_spec(str(tiny_models["t-hybrid"]))])
    batch = [render(cell, make_sample(cell, i)) for i in range(4)]
    secondary = TASKS.get("assoc_recall").secondary
    for r in batch:
        assert score(r, Prediction(r.gold), secondary) == (True, {"query_acc": 1.0})
        placeholders = tuple(tuple(r.input_ids[s:e]) for s, e in r.answer_spans)
        assert score(r, Prediction(placeholders), secondary) == (False, {"query_acc": 0.0})
    # the model's predictions do not depend on the targets: they are never input
    adapter = NativeAdapter(cell.model, "cpu")
    preds = predict_teacher_forced(adapter, batch)
    import dataclasses

    other = [dataclasses.replace(r, targets=tuple(tuple(V.value(0) for _ in g) for g in r.gold)) for r in batch]
    assert predict_teacher_forced(adapter, other) == preds


def test_trainer_targets_are_the_hidden_answers(tmp_path: Path) -> None:
    spec = load_task_spec(str(write(tmp_path / "h.yaml", MQAR + "answers: hidden\n")))
    batch = train_batch(spec, 0, 0, 64, 3)
    ids, tgt = _targets(batch)
    for b, r in enumerate(batch):
        assert r.hidden
        for (s, e), gold in zip(r.answer_spans, r.gold):
            assert ids[b, s:e].tolist() == [V.PAD] * (e - s)
            assert tgt[b, s - 1 : e - 1].tolist() == list(gold)
        assert int((tgt[b] != -100).sum()) == sum(e - s for s, e in r.answer_spans)
    # the same training samples as with the answers shown: only the rendering differs
    shown = train_batch(load_task_spec(str(write(tmp_path / "s.yaml", MQAR))), 0, 0, 64, 3)
    assert [r.gold for r in shown] == [r.gold for r in batch]
    assert _targets(shown)[1].tolist() == tgt.tolist()
