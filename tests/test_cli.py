"""End to end through the CLI: run, store, resume, overwrite, show, export, bad input."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import evalkit
from evalkit import runner
from testutil import write


def _count(out: Path, sql: str) -> int:
    c = sqlite3.connect(out / "evalkit.sqlite")
    try:
        return c.execute(sql).fetchone()[0]
    finally:
        c.close()


def test_run_fills_store_prints_table_and_resumes(cli, tiny_models, tiny_task, tmp_path):
    out = tmp_path / "runs"
    models = f"{tiny_models['t-hybrid']},{tiny_models['t-mamba']}"
    code, stdout, err = cli("run", str(tiny_task), "--models", models, "--output-dir", str(out))
    assert code == 0, err
    assert "L=64" in stdout and "L=128" in stdout and "n=8" in stdout  # 2 depths × 4 samples pooled
    assert "RANDOM" in stdout and "8 cells run, 0 reused" in stdout and str(out / "evalkit.sqlite") in stdout
    assert _count(out, "SELECT count(*) FROM cells WHERE status='complete'") == 8
    assert _count(out, "SELECT count(*) FROM records") == 32
    assert _count(out, "SELECT count(*) FROM cells WHERE random_weights=1") == 8

    code, stdout, _ = cli("run", str(tiny_task), "--models", models, "--output-dir", str(out))
    assert code == 0 and "0 cells run, 8 reused" in stdout

    code, stdout, _ = cli("run", str(tiny_task), "--models", models, "--output-dir", str(out), "--overwrite")
    assert code == 0 and "8 cells run, 0 reused" in stdout
    assert _count(out, "SELECT count(*) FROM records") == 32  # recomputed, not duplicated
    assert _count(out, "SELECT count(*) FROM runs") == 3

    code, stdout, _ = cli("run", str(tiny_task), "--models", models, "--output-dir", str(out), "--dry-run",
                          "--lengths", "64,256")
    assert code == 0 and "8 planned cells" in stdout and "4 stored, 4 pending" in stdout and "estimated time" in stdout


def test_show_and_export(cli, tiny_models, tiny_task, tmp_path):
    out = tmp_path / "runs"
    assert cli("run", str(tiny_task), "--models", str(tiny_models["t-attn"]), "-d", str(out))[0] == 0
    csv = tmp_path / "r.csv"
    code, _, _ = cli("export", "--format", "csv", "-o", str(csv), "--output-dir", str(out))
    df = pd.read_csv(csv)
    assert code == 0 and len(df) == 16
    assert {"context_length", "depth", "correct", "prediction", "answer", "cell_key", "attention_fraction"} <= set(df.columns)
    assert set(df["context_length"]) == {64, 128} and set(df["depth"]) == {0.0, 1.0}
    code, js, _ = cli("export", "--format", "json", "--level", "cells", "--store", str(out / "evalkit.sqlite"))
    assert code == 0 and len(pd.read_json(io.StringIO(js))) == 4
    key = df["cell_key"].iloc[0]
    code, stdout, _ = cli("show", key[:10], "-d", str(out))
    assert code == 0 and key in stdout and "prediction" in stdout and "<q>" in stdout
    code, _, err = cli("show", "zzzz", "-d", str(out))
    assert code == 2 and "no cell with key 'zzzz'" in err


@pytest.mark.parametrize("args,needle", [
    (["--models", "hybird"], "unknown model 'hybird'; did you mean 'hybrid'"),
    (["--models", "hybrid", "--lengths", "64,abc"], "expected comma-separated integers"),
    (["--models", "hybrid", "--lengths", "100000"], "accepts at most 16384 tokens"),
    (["--models", "hybrid", "--lengths", "4"], "too short"),
    (["--models", "hybrid", "--device", "tpu"], "'tpu' is not one of"),
])
def test_bad_input_exits_2_and_leaves_store_untouched(cli, tiny_models, tiny_task, tmp_path, args, needle):
    out = tmp_path / "runs"
    assert cli("run", str(tiny_task), "--models", str(tiny_models["t-attn"]), "-d", str(out))[0] == 0
    before = _count(out, "SELECT count(*) FROM records"), _count(out, "SELECT count(*) FROM runs")
    code, _, err = cli("run", str(tiny_task), *args, "-d", str(out))
    assert code == 2 and needle in err
    assert "Traceback" not in err
    assert (_count(out, "SELECT count(*) FROM records"), _count(out, "SELECT count(*) FROM runs")) == before


def test_bad_spec_file_exits_2(cli, tmp_path):
    bad = write(tmp_path / "bad.yaml", "task: needle\nparams:\n  dept: 0.5\n")
    code, _, err = cli("run", str(bad), "--models", "hybrid", "-d", str(tmp_path / "o"))
    assert code == 2 and f"{bad}:3: field 'params.dept'" in err and "did you mean 'depth'" in err
    assert not (tmp_path / "o").exists()


def test_failed_cells_finish_the_rest_exit_1_and_retry(cli, tiny_models, tiny_task, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    real = runner.evaluate_cell

    def flaky(adapter, info, c, *a, **k):
        if c.context_length == 128:
            raise RuntimeError("simulated failure at 128")
        return real(adapter, info, c, *a, **k)

    monkeypatch.setattr(runner, "evaluate_cell", flaky)
    code, stdout, _ = cli("run", str(tiny_task), "--models", str(tiny_models["t-mamba2"]), "-d", str(out))
    assert code == 1 and "2 failed" in stdout and "simulated failure at 128" in stdout and "FAILED" in stdout
    assert _count(out, "SELECT count(*) FROM cells WHERE status='complete'") == 2
    monkeypatch.setattr(runner, "evaluate_cell", real)
    code, stdout, _ = cli("run", str(tiny_task), "--models", str(tiny_models["t-mamba2"]), "-d", str(out))
    assert code == 0 and "2 cells run, 2 reused" in stdout


def test_interrupt_keeps_finished_cells_and_resume_matches_uninterrupted(cli, tiny_models, tiny_task, tmp_path, monkeypatch):
    models = f"{tiny_models['t-hybrid']},{tiny_models['t-attn']}"
    real = runner.evaluate_cell
    calls = {"n": 0}

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "evaluate_cell", interrupting)
    out = tmp_path / "interrupted"
    code, stdout, _ = cli("run", str(tiny_task), "--models", models, "-d", str(out))
    assert code == 130 and "every finished cell is stored" in stdout
    assert _count(out, "SELECT count(*) FROM cells") == 3
    monkeypatch.setattr(runner, "evaluate_cell", real)
    code, stdout, _ = cli("run", str(tiny_task), "--models", models, "-d", str(out))
    assert code == 0 and "5 cells run, 3 reused" in stdout

    clean = tmp_path / "clean"
    assert cli("run", str(tiny_task), "--models", models, "-d", str(clean))[0] == 0
    a, b = evalkit.load(out), evalkit.load(clean)
    cols = ["cell_key", "idx", "correct", "prediction", "answer", "prompt_hash", "target_hash"]
    pd.testing.assert_frame_equal(a[cols].sort_values(cols[:2]).reset_index(drop=True),
                                  b[cols].sort_values(cols[:2]).reset_index(drop=True))
    assert len(a) == 32 and not a.duplicated(["cell_key", "idx"]).any()
    c = sqlite3.connect(out / "evalkit.sqlite")
    assert [r[0] for r in c.execute("SELECT status FROM runs ORDER BY started_at")] == ["interrupted", "complete"]


def test_python_api(tiny_models, tiny_task, tmp_path):
    df = evalkit.run(str(tiny_task), models=[str(tiny_models["t-mamba"])], output_dir=tmp_path / "o", lengths=[64])
    assert len(df) == 8 and set(df["depth"]) == {0.0, 1.0} and set(df["context_length"]) == {64}
    assert df["random_weights"].all() and df["correct"].dtype == bool
    again = evalkit.run(str(tiny_task), models=[str(tiny_models["t-mamba"])], output_dir=tmp_path / "o", lengths=[64])
    pd.testing.assert_frame_equal(df, again)
    assert len(evalkit.load(tmp_path / "o")) == 8


def test_cli_help_is_fast_and_does_not_import_torch():
    code = "import sys, evalkit.cli; assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "--help"], capture_output=True, text=True, check=True)
    assert "run" in r.stdout and "export" in r.stdout


def _checkpoint(tmp_path: Path, arch: dict) -> Path:
    from evalkit.models.native.config import NativeConfig
    from evalkit.models.native.lm import NativeLM

    m = NativeLM(NativeConfig.from_dict(arch).resolved())
    m.init_weights(7)
    return m.save_pretrained(tmp_path / "ckpt")


def test_checkpoint_dir_runs_and_retraining_in_place_never_reuses(cli, tiny_task, tmp_path):
    ck = _checkpoint(tmp_path, {"flavor": "debug", "ssm": "mamba2", "attention_fraction": 0.5})
    out = tmp_path / "runs"
    code, stdout, err = cli("run", str(tiny_task), "--models", str(ck), "-d", str(out), "--no-cost")
    assert code == 0, err
    assert "RANDOM" not in stdout and _count(out, "SELECT count(*) FROM cells WHERE random_weights=0") == 4
    # new weights in the same place → a new model identity → nothing reused
    from safetensors.torch import load_file, save_file

    t = load_file(ck / "model.safetensors")
    t["embed.weight"] = t["embed.weight"] * 1.5
    save_file(t, ck / "model.safetensors")
    code, stdout, _ = cli("run", str(tiny_task), "--models", str(ck), "-d", str(out), "--no-cost")
    assert code == 0 and "4 cells run, 0 reused" in stdout
    assert _count(out, "SELECT count(DISTINCT model_id) FROM cells") == 2


@pytest.mark.parametrize("damage,needle", [
    ("truncate", "unreadable safetensors file"),
    ("config", "tensor 'embed.weight' has shape"),
])
def test_corrupt_checkpoint_exits_2_before_touching_the_store(cli, tiny_task, tmp_path, damage, needle):
    ck = _checkpoint(tmp_path, {"flavor": "debug"})
    out = tmp_path / "runs"
    assert cli("run", str(tiny_task), "--models", str(ck), "-d", str(out), "--no-cost")[0] == 0
    before = (_count(out, "SELECT count(*) FROM records"), _count(out, "SELECT count(*) FROM runs"))
    f = ck / "model.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:1000])
    else:  # a config that no longer matches the weights
        import json

        cfg = json.loads((ck / "config.json").read_text())
        cfg["d_model"] = 48
        cfg["n_heads"] = 2
        (ck / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli("run", str(tiny_task), "--models", str(ck), "-d", str(out))
    assert code == 2 and needle in err and str(f) in err and "Traceback" not in err
    assert (_count(out, "SELECT count(*) FROM records"), _count(out, "SELECT count(*) FROM runs")) == before


def test_samples_identical_across_processes(tiny_task):
    code = (
        "import hashlib, sys; from evalkit.runner import plan, make_sample, render; "
        "from evalkit.spec import load_task_spec, load_model_spec; "
        f"cells = plan([load_task_spec({str(tiny_task)!r})], [load_model_spec('hybrid')]); "
        "h = hashlib.sha256(); "
        "[h.update(repr(render(c, make_sample(c, i)).input_ids).encode()) for c in cells for i in range(c.n_samples)]; "
        "print(h.hexdigest())"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(outs) == 1 and len(outs.pop().strip()) == 64
