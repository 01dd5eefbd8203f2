"""`evalkit run ... --models hf:PATH` end to end, format selection, the text cells' sample key,
and bad input (exit 2 with a sentence naming the path and what is wrong)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NEEDLE = str(REPO / "tasks" / "needle.yaml")


def test_run_needle_on_an_hf_checkpoint(cli: Any, hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    code, out, err = cli("run", NEEDLE, "--models", f"hf:{hf_checkpoints['llama']}", "--lengths", "256,512",
                         "--samples", "2", "--output-dir", str(tmp_path), "--device", "cpu")
    assert code == 0, err
    assert "10 cells run, 0 reused from the store, 0 failed" in out and "L=512" in out
    import evalkit

    df = evalkit.load(tmp_path)
    assert len(df) == 20 and set(df["format"]) == {"text"} and (df["length"] == df["context_length"]).all()
    assert set(df["model_kind"]) == {"hf"} and set(df["attention_fraction"]) == {1.0}
    code, out, _ = cli("show", df["cell_key"].iloc[0][:10], "--output-dir", str(tmp_path))
    assert code == 0 and "special magic number" in out and "haystack tokens" in out
    code, out, _ = cli("run", NEEDLE, "--models", f"hf:{hf_checkpoints['llama']}", "--lengths", "256,512",
                       "--samples", "2", "--output-dir", str(tmp_path), "--device", "cpu")
    assert code == 0 and "0 cells run, 10 reused" in out


def test_format_selection_and_sample_keys(hf_checkpoints: dict[str, Path], tiny_models: dict[str, Path],
                                          tmp_path: Path) -> None:
    from evalkit.errors import SpecError
    from evalkit.models.base import stable_hash
    from evalkit.runner import GENERATOR_VERSION, plan
    from evalkit.spec import load_model_spec, load_task_spec

    hf = load_model_spec(f"hf:{hf_checkpoints['mamba2']}")
    assert load_model_spec(str(hf_checkpoints["mamba2"])) == hf  # a transformers directory is hf: too
    native = load_model_spec(str(tiny_models["t-mamba2"]))
    spec = load_task_spec(NEEDLE)
    cells = plan([spec], [hf, native], lengths=[256])
    fmts = {c.model.kind: c.format for c in cells}
    assert fmts == {"hf": "text", "native": "tokens"}
    # tokens cells keep the sample key of schema 1, so old stores are reused
    tok = next(c for c in cells if c.format == "tokens")
    old = stable_hash({"generator": GENERATOR_VERSION, "task": "needle", "task_version": 1, "params": dict(tok.params),
                       "format": "tokens", "render": {"filler": "random"}, "tokenizer": None,
                       "context_length": 256, "seed": 0})[:24]
    assert tok.sample_key == old
    # text cells: the tokenizer and every render option are in the key
    text = [c for c in cells if c.format == "text"]
    assert len({c.sample_key for c in text}) == len(text)
    noise = tmp_path / "noise.yaml"
    noise.write_text(Path(NEEDLE).read_text().replace("filler: random", "filler: random\ntext: {haystack: noise}"))
    other = plan([load_task_spec(noise)], [hf], lengths=[256])
    assert {c.sample_key for c in other}.isdisjoint(c.sample_key for c in text)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(Path(NEEDLE).read_text().replace("filler: random", "filler: random\nformat: tokens"))
    with pytest.raises(SpecError, match="format 'tokens' is not accepted by model 'mamba2'"):
        plan([load_task_spec(pinned)], [hf], lengths=[256])


def test_overlength_skip_is_counted(cli: Any, hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text("task: multi_query\nlengths: [200]\nsamples: 3\ntext: {overlength: skip}\n"
                    "params: {num_needles: 6, num_queries: [2]}\n")
    code, out, err = cli("run", str(spec), "--models", f"hf:{hf_checkpoints['llama']}", "--output-dir",
                         str(tmp_path / "r"), "--no-cost", "--device", "cpu")
    assert code == 1 and "all 3 samples are longer than 200 tokens" in out
    code, _, err = cli("run", str(spec), "--models", f"hf:{hf_checkpoints['llama']}",
                       "--output-dir", str(tmp_path / "r2"), "--no-cost", "--lengths", "400")
    assert code == 0, err
    from evalkit.store import Store

    store = Store.open_dir(tmp_path / "r2")
    try:
        (cell,) = store.cells()
        assert cell["status"] == "complete" and cell["n_samples"] == 3
        assert len(store.records(cell["cell_key"])) == 3 - cell["n_skipped"] > 0
    finally:
        store.close()


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_bad_checkpoints_exit_2_naming_what_is_missing(cli: Any, hf_checkpoints: dict[str, Path],
                                                        tmp_path: Path) -> None:
    llama = hf_checkpoints["llama"]
    before = set(tmp_path.iterdir())

    def run(model: str, *extra: str) -> str:
        code, out, err = cli("run", NEEDLE, "--models", model, "--lengths", "256", "--output-dir",
                             str(tmp_path / "runs"), *extra)
        assert code == 2, (out, err)
        assert not (tmp_path / "runs").exists()  # nothing stored
        return err

    no_cfg = _copy(llama, tmp_path / "no_cfg", ("config.json",))
    assert f"{no_cfg}: no config.json" in run(f"hf:{no_cfg}")
    no_tok = _copy(llama, tmp_path / "no_tok", ("tokenizer.json", "tokenizer_config.json"))
    assert f"{no_tok}: no tokenizer" in run(f"hf:{no_tok}")
    unknown = _copy(llama, tmp_path / "unknown")
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**cfg, "model_type": "lamma"}))
    err = run(f"hf:{unknown}")
    assert "unknown architecture (model_type 'lamma'" in err and "did you mean 'llama'" in err
    assert "accepts at most 4096 tokens" in run(f"hf:{llama}", "--lengths", "8192")
    assert "too short for this sample" in run(f"hf:{llama}", "--lengths", "32")
    assert "no such checkpoint directory" in run(f"hf:{tmp_path / 'nowhere'}")
    spec = tmp_path / "chat.yaml"
    spec.write_text(f"name: chat\nkind: hf\ncheckpoint: {llama}\noptions:\n  chat_template: true\n")
    assert f"{llama}: option chat_template: true, but the tokenizer has no chat template" in run(str(spec))
    spec.write_text(f"name: chat\nkind: hf\ncheckpoint: {llama}\noptions:\n  dtype: float8\n")
    assert f"{spec}:5: field 'options.dtype': option 'dtype' must be one of" in run(str(spec))
    assert set(tmp_path.iterdir()) - before == {no_cfg, no_tok, unknown, spec}


def test_chat_template_option_renders_through_the_runner(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from hf_tiny import CHAT_TEMPLATE

    from evalkit.runner import make_sample, plan, render
    from evalkit.spec import load_model_spec, load_task_spec

    d = _copy(hf_checkpoints["llama"], tmp_path / "chat")
    (d / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    spec = tmp_path / "chat.yaml"
    spec.write_text(f"name: chat\nkind: hf\ncheckpoint: {d}\noptions: {{chat_template: true}}\n")
    on = plan([load_task_spec(NEEDLE)], [load_model_spec(str(spec))], lengths=[300])
    off = plan([load_task_spec(NEEDLE)], [load_model_spec(f"hf:{d}")], lengths=[300])
    assert on[0].sample_key != off[0].sample_key and on[0].model_id != off[0].model_id
    r = render(on[0], make_sample(on[0], 0))
    assert r.context_length == 300 and r.prompt_text.startswith("<s>[user] Some special magic numbers")
