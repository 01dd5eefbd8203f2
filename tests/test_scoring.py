"""Teacher-forced exact match agrees with greedy generation (DESIGN.md, "Scoring")."""

from __future__ import annotations

import dataclasses

import pytest

from evalkit.models.native_adapter import NativeAdapter
from evalkit.runner import make_sample, plan, render
from evalkit.scoring import Prediction, expected, predict_greedy, predict_teacher_forced, score
from evalkit.spec import load_model_spec, load_task_spec
from evalkit.tasks import TASKS


@pytest.mark.parametrize("model", ["t-attn", "t-mamba", "t-mamba2", "t-hybrid"])
@pytest.mark.parametrize("task", ["needle", "assoc_recall", "copy_number", "multi_query"])
def test_teacher_forcing_equals_greedy(tiny_models, tmp_path, model, task):
    spec_path = tmp_path / f"{task}.yaml"
    spec_path.write_text(f"task: {task}\nlengths: [160]\nsamples: 3\n")
    cells = plan([load_task_spec(str(spec_path))], [load_model_spec(str(tiny_models[model]))])
    cell = cells[0]
    adapter = NativeAdapter(cell.model, "cpu")
    batch = [render(cell, make_sample(cell, i)) for i in range(cell.n_samples)]
    secondary = TASKS.get(task).secondary

    greedy = predict_greedy(adapter, batch)
    tf = predict_teacher_forced(adapter, batch)
    for r, g, t in zip(batch, greedy, tf):
        # the first answer token is predicted from the same prefix in both modes
        assert g.answers[0][0] == t.answers[0][0]
        assert score(r, g, secondary)[0] == score(r, t, secondary)[0]

        # Make the model's own greedy trajectory the gold answer: teacher forcing must then call
        # every answer right, and must call it wrong once one answer token is changed.
        ids = list(r.input_ids)
        for (s, e), ans in zip(r.answer_spans, g.answers):
            ids[s:e] = ans
        gold = dataclasses.replace(r, input_ids=tuple(ids))
        (t2,) = predict_teacher_forced(adapter, [gold])
        assert t2.answers == expected(gold)
        assert score(gold, t2, secondary)[0] is True
        assert score(gold, g, secondary) == (True, {k: 1.0 for k in secondary})

        s, e = gold.answer_spans[-1]
        ids[e - 1] = (ids[e - 1] + 1) % 512
        wrong = dataclasses.replace(gold, input_ids=tuple(ids))
        (t3,) = predict_teacher_forced(adapter, [wrong])
        (g3,) = predict_greedy(adapter, [wrong])
        assert score(wrong, t3, secondary)[0] is False
        assert score(wrong, g3, secondary)[0] is False


def test_secondary_metrics_are_fractions():
    from evalkit.tasks.base import Rendered

    r = Rendered(input_ids=(1, 2, 3, 4, 5, 6, 7), answer_spans=((2, 4), (5, 7)), format="tokens")
    p = Prediction(((3, 4), (6, 0)))
    ok, s = score(r, p, {"query_acc": "queries", "digit_acc": "tokens"})
    assert ok is False and s == {"query_acc": 0.5, "digit_acc": 0.75}
    assert score(r, Prediction(((3, 4), (6, 7))), {})[0] is True
