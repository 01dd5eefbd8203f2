"""The same model and task through lm-eval and through ``evalkit run`` give the same scores,
sample for sample.

The model is the tiny Llama in ``benchmarks/checkpoints/tiny-llama-niah`` (trained for needle
retrieval by ``benchmarks/train_tiny_niah.py``): it gets most needles right and some wrong, so
agreement is tested on both outcomes, not on a model that scores 0 everywhere. evalkit scores
teacher-forced (one forward pass); lm-eval generates greedily through its own ``hf`` backend and
the exported task's ``exact_match``: for a whole answer the two must agree exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CKPT = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoints" / "tiny-llama-niah"

SPEC = """\
task: needle
filler: random
lengths: [256, 768]
samples: 4
seed: 5
params:
  depth: [0.0, 0.5, 1.0]
  key_len: 2
  value_len: 1
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """(evalkit per-sample correctness, lm-eval per-sample exact match), keyed alike."""
    import evalkit
    from evalkit.lmeval.export import export_lm_eval

    root = tmp_path_factory.mktemp("agree")
    spec = root / "agree_needle.yaml"
    spec.write_text(SPEC)
    df = evalkit.run(str(spec), models=[f"hf:{CKPT}"], output_dir=root / "runs", device="cpu")
    ours = {(int(r.context_length), f"depth={r.depth}", int(r.idx)): bool(r.correct) for r in df.itertuples()}

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    export_lm_eval(root / "lm_tasks", [str(spec)])
    out = simple_evaluate(model="hf", model_args=f"pretrained={CKPT},dtype=float32", tasks=["evalkit_agree_needle"],
                          task_manager=TaskManager(include_path=str(root / "lm_tasks"), include_defaults=False,
                                                   metadata={"pretrained": str(CKPT)}), device="cpu",
                          batch_size=8, log_samples=True)
    theirs = {}
    for samples in out["samples"].values():
        for s in samples:
            d = s["doc"]
            theirs[(int(d["context_length"]), d["axes"], int(d["index"]))] = bool(s["exact_match"][1])
    (root / "results.json").write_text(json.dumps(out["results"], default=str))
    return ours, theirs


def test_same_samples_same_verdicts(runs: tuple[dict, dict]) -> None:
    ours, theirs = runs
    assert len(ours) == 2 * 3 * 4 and set(ours) == set(theirs)
    disagree = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not disagree, f"evalkit (teacher-forced) vs lm-eval (generated) disagree on {disagree}"


def test_the_model_really_retrieves(runs: tuple[dict, dict]) -> None:
    ours, _ = runs
    acc = sum(ours.values()) / len(ours)
    assert 0.5 <= acc, f"the checkpoint should retrieve most needles, got {acc:.2f}"
