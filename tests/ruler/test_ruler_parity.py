"""``evalkit run tasks/ruler/niah_*.yaml`` vs lm-eval's own RULER tasks on the same checkpoint.

The model is the tiny Llama in ``benchmarks/checkpoints/tiny-llama-niah``, which really retrieves
(lm-eval: niah_single_1 1.00, niah_multikey_2 about 0.1 at 1024 tokens). Both harnesses draw
their own random samples, so scores are compared within sampling error (two-proportion z test),
and evalkit reports both scoring modes: teacher-forced and greedy generation with RULER's budget.
lm-eval's port leaves the answer prefix out of the length count, so the evalkit side runs with
``length_rule: lm_eval`` to build prompts of the same size; the prompt lengths are compared too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval", reason="the parity test needs the lm-eval extra")
pytest.importorskip("wonderwords", reason="lm-eval's RULER tasks need lm-eval[ruler]")

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "benchmarks" / "checkpoints" / "tiny-llama-niah"
LENGTH, N = 1024, 20
TASKS = ("niah_single_1", "niah_multikey_2")


def _spec(tmp: Path, name: str) -> Path:
    d = yaml.safe_load((ROOT / "tasks" / "ruler" / f"{name}.yaml").read_text())
    d["params"]["length_rule"] = "lm_eval"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import evalkit

    tmp = tmp_path_factory.mktemp("ruler_parity")
    out: dict[str, dict[str, object]] = {}
    for name in TASKS:
        spec = _spec(tmp, name)
        row: dict[str, object] = {}
        for scoring in ("teacher_forced", "greedy"):
            df = evalkit.run(str(spec), models=[f"hf:{CKPT}"], lengths=[LENGTH], samples=N,
                             output_dir=tmp / "runs", device="cpu", scoring=scoring)
            row[scoring] = df["correct"].astype(float).tolist()
            row[f"{scoring}_lengths"] = df["length"].tolist()
        out[name] = row
    lm = simple_evaluate(model="hf", model_args=f"pretrained={CKPT},dtype=float32", tasks=list(TASKS),
                         task_manager=TaskManager(metadata={"pretrained": str(CKPT), "max_seq_lengths": [LENGTH]}),
                         device="cpu", batch_size=20, limit=N, log_samples=True)
    for name in TASKS:
        samples = lm["samples"][name]
        out[name]["lm_eval"] = [float(s[str(LENGTH)]) for s in samples]
        out[name]["lm_eval_lengths"] = [int(s["doc"]["length"]) for s in samples]
    for name, r in out.items():  # shown with pytest -s
        print(name, {k: round(sum(v) / len(v), 2) for k, v in r.items()})
    return out


def _z(a: list[float], b: list[float]) -> float:
    """Two-proportion z statistic (pooled), 0 when both are constant and equal."""
    pa, pb = sum(a) / len(a), sum(b) / len(b)
    pool = (sum(a) + sum(b)) / (len(a) + len(b))
    se = math.sqrt(pool * (1 - pool) * (1 / len(a) + 1 / len(b)))
    return 0.0 if se == 0 else abs(pa - pb) / se


@pytest.mark.parametrize("name", TASKS)
def test_scores_agree_within_sampling_error(results: dict, name: str) -> None:
    r = results[name]
    assert len(r["lm_eval"]) == len(r["greedy"]) == len(r["teacher_forced"]) == N
    for mode in ("greedy", "teacher_forced"):
        z = _z(r[mode], r["lm_eval"])
        assert z < 2.58, (f"{name}: evalkit {mode} {sum(r[mode]) / N:.2f} vs lm-eval "
                          f"{sum(r['lm_eval']) / N:.2f} (z={z:.2f})")


def test_single_1_really_retrieves(results: dict) -> None:
    r = results["niah_single_1"]
    assert sum(r["lm_eval"]) / N >= 0.8 and sum(r["greedy"]) / N >= 0.8


def test_teacher_forced_right_implies_generated_right(results: dict) -> None:
    for name in TASKS:
        r = results[name]
        assert all(g >= t for t, g in zip(r["teacher_forced"], r["greedy"])), name


def test_prompts_are_the_same_size(results: dict) -> None:
    """lm-eval's ``length`` is tokens(input) + 128; evalkit's is tokens(input + answer prefix + answer).
    Same haystack size means they differ by the prefix and answer only (a few dozen tokens)."""
    for name in TASKS:
        r = results[name]
        ours = sum(r["greedy_lengths"]) / N
        theirs = sum(r["lm_eval_lengths"]) / N - 128
        assert abs(ours - theirs) < 60, (name, ours, theirs)
        assert max(r["greedy_lengths"]) <= LENGTH
