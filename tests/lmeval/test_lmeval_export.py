"""``evalkit export --format lm-eval DIR``: the task files, the documents they build (identical
to ``evalkit run``'s samples), the metrics, and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evalkit.errors import EvalkitError


def test_export_writes_a_task_per_length_and_a_group(tmp_path: Path) -> None:
    from evalkit.lmeval.export import export_lm_eval

    written = export_lm_eval(tmp_path, ["needle", "multi_query"], lengths=[256, 512], samples=2)
    names = sorted(p.name for p in written)
    assert names == sorted(["evalkit_needle.yaml", "evalkit_needle_L256.yaml", "evalkit_needle_L512.yaml",
                            "evalkit_multi_query.yaml", "evalkit_multi_query_L256.yaml",
                            "evalkit_multi_query_L512.yaml"])
    text = (tmp_path / "evalkit_needle_L512.yaml").read_text()
    assert 'evalkit_spec: "needle"' in text and "evalkit_lengths: [512]" in text and "evalkit_samples: 2" in text
    group = (tmp_path / "evalkit_needle.yaml").read_text()
    assert "group: evalkit_needle" in group and "  - evalkit_needle_L256\n  - evalkit_needle_L512" in group


def test_builtin_names_are_portable_other_specs_absolute(tmp_path: Path) -> None:
    from evalkit.lmeval.export import export_lm_eval

    spec = tmp_path / "mine.yaml"
    spec.write_text("task: needle\nlengths: [300]\nsamples: 1\n")
    export_lm_eval(tmp_path / "out", [str(spec)])
    assert f'evalkit_spec: "{spec.resolve()}"' in (tmp_path / "out" / "evalkit_mine_L300.yaml").read_text()


@pytest.mark.parametrize(("spec", "length"), [("needle", 256), ("multi_query", 512)])
def test_documents_are_evalkit_runs_samples(spec: str, length: int, tokenizer_dir: Path, llama_ckpt: Path) -> None:
    """Prompts and answers of the lm-eval documents == ``evalkit run SPEC --models hf:PATH``'s
    renderings (the tokenizer adds a BOS, and multi_query's second prompt holds the first answer)."""
    from evalkit.lmeval.tasks import build_docs
    from evalkit.runner import make_sample, plan, render
    from evalkit.spec import load_model_spec, load_task_spec

    cells = plan([load_task_spec(spec)], [load_model_spec(f"hf:{llama_ckpt}")], lengths=[length], samples=2)
    rendered = {f"{c.sample_key}:{i}": render(c, make_sample(c, i)) for c in cells for i in range(2)}
    docs = build_docs(spec, str(tokenizer_dir), [length], 2, 0)
    assert {d.sample_uid for d in docs} == set(rendered)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for d in docs:
        r = rendered[d.sample_uid]
        start = r.answer_spans[d.query][0]
        assert tok(d.prompt)["input_ids"] == list(r.input_ids[:start])
        assert d.answer == r.answers_text[d.query] and d.n_queries == len(r.answer_spans)
    assert max(d.query for d in docs) == (1 if spec == "multi_query" else 0)


def test_lm_eval_loads_the_exported_task_and_builds_its_dataset(tmp_path: Path, tokenizer_dir: Path) -> None:
    from lm_eval.tasks import TaskManager

    from evalkit.lmeval.export import export_lm_eval

    export_lm_eval(tmp_path, ["needle"], lengths=[256, 384], samples=2)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False, metadata={"pretrained": str(tokenizer_dir)})
    loaded = tm.load(["evalkit_needle"])
    assert any("evalkit_needle" in str(g) for g in loaded["groups"])  # the group, keyed by lm-eval's group object
    leaves = dict(loaded["tasks"])
    assert set(leaves) == {"evalkit_needle_L256", "evalkit_needle_L384"}
    docs = list(leaves["evalkit_needle_L384"].test_docs())
    assert len(docs) == 2 * 5  # 2 samples × 5 depths (needle.yaml's sweep)
    assert {d["context_length"] for d in docs} == {384} and all(d["length"] <= 384 for d in docs)


def test_metrics() -> None:
    from evalkit.lmeval.tasks import all_queries, exact, mean_per_sample, process_results, substring

    assert exact(" 1234567.", "1234567") and exact("1234567", "1234567") and not exact(" 123456", "1234567")
    assert not exact(" The answer is 1234567", "1234567") and substring(" The answer is 1234567", "1234567")
    r = process_results({"sample_uid": "s:0", "answer": "apple"}, [" Apple pie"])
    assert r["exact_match"] == ("s:0", False) and r["substring_match"] == ("s:0", True) and r["query_acc"] == 0.0
    items = [("a", True), ("a", False), ("b", True), ("b", True)]
    assert all_queries(items) == 0.5  # sample a has one query wrong
    assert mean_per_sample(items) == 0.75


def test_cli_export_and_its_bad_input(cli: Any, tmp_path: Path) -> None:
    code, out, _ = cli("export", "--format", "lm-eval", str(tmp_path / "t"), "--task", "needle", "--lengths", "256")
    assert code == 0 and "evalkit_needle" in out and (tmp_path / "t" / "evalkit_needle_L256.yaml").exists()
    code, _, err = cli("export", "--format", "lm-eval")
    assert code == 2 and "DIRECTORY" in err
    (tmp_path / "file").write_text("x")
    code, _, err = cli("export", "--format", "lm-eval", str(tmp_path / "file"))
    assert code == 2
    code, _, err = cli("export", "--format", "lm-eval", str(tmp_path / "t2"), "--task", "needel")
    assert code == 2 and "needle" in err


def test_a_tokens_format_spec_cannot_be_exported(tmp_path: Path) -> None:
    from evalkit.lmeval.export import export_lm_eval

    spec = tmp_path / "tok.yaml"
    spec.write_text("task: needle\nformat: tokens\nlengths: [256]\n")
    with pytest.raises(EvalkitError, match="format 'tokens'"):
        export_lm_eval(tmp_path / "out", [str(spec)])


def test_no_tokenizer_in_the_model_arguments_is_a_clear_error() -> None:
    from evalkit.lmeval.tokenizer import tokenizer_ref

    with pytest.raises(EvalkitError, match="pretrained=PATH"):
        tokenizer_ref({"dtype": "float32"})
