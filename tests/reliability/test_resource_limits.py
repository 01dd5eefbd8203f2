"""Resource limits: running out of memory at a long context (a real CPU allocation failure under
an address-space limit; a simulated CUDA OOM) is recorded per cell with its reason, the sweep
finishes the other cells, the run exits 1 and names them, the report shows them as failed, and
the next run retries them. A length over a model's max_context is not a resource limit but bad
input: it is refused at plan time (exit 2) before anything is stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from reliability_util import (
    TINY_MODELS,
    ForkServer,
    call_cli,
    error_sentence,
    files_of,
    log_text,
    logical_digest,
    store_rows,
    tiny_task,
    write,
)

from evalkit.models.native_adapter import NativeAdapter


def _cells(out: Path) -> list[tuple]:
    c = sqlite3.connect(out / "evalkit.sqlite")
    try:
        return c.execute("SELECT model, context_length, status, error FROM cells ORDER BY model, context_length").fetchall()
    finally:
        c.close()


def _report(out: Path) -> str:
    code, md, err = call_cli(["report", "-d", str(out), "--format", "markdown", "-o", "-"])
    assert code == 0, err
    return md


def test_cpu_memory_exhausted_at_a_long_context_is_recorded_per_cell(tmp_path: Path) -> None:
    """A child whose address space is capped 64 MiB above its warm size: short contexts fit,
    16384-token ones cannot allocate (torch's real DefaultCPUAllocator error)."""
    models = [write(tmp_path / "models" / f"{n}.yaml", f"name: {n}\nkind: native\narch: {{flavor: debug, {a}, "
                                                       "max_context: 16384}\n")
              for n, a in (("m-attn", "attention_fraction: 1.0"), ("m-hybrid", "ssm: mamba2, attention_fraction: 0.5"))]
    task = tiny_task(tmp_path / "tasks", lengths=(64, 16384), samples=2, depths=(0.5,))
    argv = ["run", str(task), "--models", ",".join(map(str, models)), "--device", "cpu", "--no-cost"]
    with ForkServer(tmp_path, [*argv, "-d", str(tmp_path / "warm"), "--lengths", "64"]) as server:
        res = server.one(argv=[*argv, "-d", str(tmp_path / "out")], log=str(tmp_path / "run.log"), memory_limit_mb=64)
    out = tmp_path / "out"
    assert res["code"] == 1, log_text(tmp_path / "run.log")
    rows = _cells(out)
    assert [(m, n, s) for m, n, s, _ in rows if n == 64] == [("m-attn", 64, "complete"), ("m-hybrid", 64, "complete")]
    failed = [(m, e) for m, n, s, e in rows if s == "failed"]
    assert failed and all(n == 16384 for _, n, s, _ in rows if s == "failed")
    assert all("can't allocate memory" in e or "MemoryError" in e for _, e in failed), failed
    stdout = Path(tmp_path / "run.log").read_text()
    assert f"{len(failed)} failed" in stdout and "FAILED" in stdout
    assert "FAILED" in _report(out)
    assert not store_rows(out)["records"].keys() - {k for k in store_rows(out)["cells"]}


def test_simulated_cuda_oom_is_recorded_per_cell_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = TINY_MODELS["native"](tmp_path / "models")
    task = tiny_task(tmp_path / "tasks", lengths=(64, 128, 256), samples=3)
    argv = ["run", str(task), "--models", ",".join(map(str, models)), "--device", "cpu"]
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert call_cli([*argv, "-d", str(ref), "--no-cost"])[0] == 0
    real_predict, real_prefill = NativeAdapter.predict, NativeAdapter.prefill

    def oom(ids: torch.Tensor) -> None:
        if ids.shape[1] >= 128:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {ids.shape[1] ** 2} bytes")

    monkeypatch.setattr(NativeAdapter, "predict", lambda self, ids, pos: (oom(ids), real_predict(self, ids, pos))[1])
    monkeypatch.setattr(NativeAdapter, "prefill", lambda self, ids: (oom(ids), real_prefill(self, ids))[1])
    code, stdout, err = call_cli([*argv, "-d", str(out)])
    assert code == 1, err
    rows = _cells(out)
    assert {(n, s) for _, n, s, _ in rows} == {(64, "complete"), (128, "failed"), (256, "failed")}
    assert all("OutOfMemoryError: CUDA out of memory" in e for _, _, s, e in rows if s == "failed")
    assert len(rows) == 2 * 3 * 2  # every cell of both models was tried: the sweep went on
    assert "8 failed" in stdout and stdout.count("FAILED") >= 4
    assert _report(out).count("FAILED") >= 4
    assert call_cli(["report", "-d", str(out), "-o", str(tmp_path / "lb.html")])[0] == 0
    html = (tmp_path / "lb.html").read_text()
    assert "L=256" in html and html.count(">FAILED<") >= 4 and "8 of 12 cells failed" in html
    c = sqlite3.connect(out / "evalkit.sqlite")
    costs = dict(c.execute("SELECT context_length || ':' || model, status FROM costs").fetchall())
    c.close()
    assert {k: v for k, v in costs.items() if k.startswith("64:")} == {"64:r-hybrid": "ok", "64:r-attn": "ok"}
    assert {v for k, v in costs.items() if not k.startswith("64:")} == {"oom"}

    monkeypatch.setattr(NativeAdapter, "predict", real_predict)
    monkeypatch.setattr(NativeAdapter, "prefill", real_prefill)
    code, stdout, err = call_cli([*argv, "-d", str(out), "--no-cost"])
    assert code == 0 and "8 cells run, 4 reused" in stdout, err
    assert store_rows(out) == store_rows(ref)


def test_length_over_max_context_is_refused_at_plan_time_untouched(tmp_path: Path) -> None:
    """One model of the sweep takes 16384 tokens, the other (debug flavor) 4096: asking for 8192
    is bad input, refused before any cell runs, whatever the other model could do."""
    long = write(tmp_path / "models" / "long.yaml", "name: long\nkind: native\narch: {flavor: debug, "
                                                    "max_context: 16384}\n")
    short = TINY_MODELS["native"](tmp_path / "models")[0]
    task = tiny_task(tmp_path / "tasks")
    out = tmp_path / "out"
    assert call_cli(["run", str(task), "--models", str(short), "-d", str(out), "--no-cost"])[0] == 0
    before = logical_digest(out), files_of(out)
    code, _, err = call_cli(["run", str(task), "--models", f"{long},{short}", "--lengths", "64,8192", "-d", str(out)])
    assert code == 2 and "accepts at most 4096 tokens" in error_sentence(err)
    assert (logical_digest(out), files_of(out)) == before
