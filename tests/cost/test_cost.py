"""The cost probe: analytic FLOPs, the exponent fit, probe rows, too_long / oom / error, the
runner hook (`evalkit run` fills costs once) and `evalkit cost`. Timings are only sanity-checked."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import pytest
import torch

from evalkit import cost
from evalkit.models import ADAPTERS
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.lm import NativeLM
from evalkit.spec import load_model_spec
from evalkit.store import COST_COLUMNS


def _adapter(path: Path):
    return ADAPTERS.get("native")(load_model_spec(str(path)), "cpu")


def _rows(out: Path, sql: str = "SELECT * FROM costs ORDER BY model, context_length") -> list[sqlite3.Row]:
    c = sqlite3.connect(out / "evalkit.sqlite")
    c.row_factory = sqlite3.Row
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


# --------------------------------------------------------------------------- analytic FLOPs
def test_flops_per_token_hand_computed():
    # debug flavor: V=512, D=32, 2 layers, 2 heads, N=8, headdim P=16, chunk Q=16, E=64, d_conv 4
    hybrid = NativeConfig.from_dict({"flavor": "debug", "ssm": "mamba2", "attention_fraction": 0.5})
    assert hybrid.layer_types() == ("mamba2", "attention")
    attn = 2 * 4 * 32 * 32 + 2 * 32 * (64 + 1)  # 2·4D² + 2·2·d·(L+1)/2 at L = 64
    m2_weights = 32 * (2 * 64 + 2 * 8 + 4) + (64 + 2 * 8) * 4 + 64 * 32  # in_proj, conv, out_proj = 7104
    m2_scan = 2 * (16 * (8 + 16) * 4 + 2 * 8 * 16 * 4)  # 2·(Q·(N+P)·H + 2·N·P·H), H = 4
    head = 2 * 32 * 512
    assert attn + 2 * m2_weights + m2_scan + head == 64448
    assert cost.analytic_flops_per_token(hybrid, 64) == 64448

    mamba = NativeConfig.from_dict({"flavor": "debug", "ssm": "mamba"})
    m1_weights = 32 * 128 + 64 * 4 + 64 * (2 + 16) + 2 * 64 + 64 * 32  # R = ceil(32/16) = 2 → 7680
    per_layer = 2 * m1_weights + 9 * 64 * 8
    assert cost.analytic_flops_per_token(mamba, 64) == 2 * per_layer + head == 72704
    assert cost.analytic_flops_per_token(mamba, 4096) == 72704  # SSM: independent of length

    attn_only = NativeConfig.from_dict({"flavor": "debug", "attention_fraction": 1.0, "d_ff": 48})
    f = lambda L: cost.analytic_flops_per_token(attn_only, L)  # noqa: E731
    assert f(1000) - f(0) == 2 * (2 * 32 * 1000)  # 2·d per extra token of average span, 2 layers
    assert f(0) == 2 * (2 * 4 * 32 * 32 + 2 * 32 + 2 * 3 * 32 * 48) + head  # the MLP adds 2·3·D·d_ff


@pytest.mark.parametrize("arch", [
    {"flavor": "debug", "ssm": "mamba"}, {"flavor": "debug", "ssm": "mamba2"},
    {"flavor": "debug", "attention_fraction": 1.0},
    {"flavor": "debug", "ssm": "s4d"}, {"flavor": "debug", "ssm": "gated_deltanet"},
    {"flavor": "debug", "pattern": "WMWA", "window": 16},
])
def test_matmul_params_match_the_built_model(arch):
    cfg = NativeConfig.from_dict(arch).resolved()
    model = NativeLM(cfg)
    for block, kind in zip(model.layers, cfg.layer_types()):
        weights = sum(m.weight.numel() for m in block.mixer.modules()
                      if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)))
        assert cost.mixer_matmul_params(cfg, kind) == weights


# --------------------------------------------------------------------------- exponent fit
def test_scaling_exponent():
    Ls = [256, 512, 1024, 2048, 4096]
    assert cost.scaling_exponent(Ls, [3e-9 * L * L for L in Ls]) == pytest.approx(2.0, abs=1e-12)
    assert cost.scaling_exponent(Ls, [5e-6 * L for L in Ls]) == pytest.approx(1.0, abs=1e-12)
    assert cost.scaling_exponent(Ls, [L ** 1.5 for L in Ls]) == pytest.approx(1.5, abs=1e-12)
    assert math.isnan(cost.scaling_exponent([1024], [0.1]))
    assert math.isnan(cost.scaling_exponent([1024, 2048], [0.1, None]))


# --------------------------------------------------------------------------- the probe
def test_probe_rows_have_every_column_and_sane_values(tiny_models):
    a = _adapter(tiny_models["t-hybrid"])
    info = a.describe()
    rows = cost.probe(a, [256, 64], "cpu", repeats=2, decode_tokens=3, run_id="r1")
    assert [r["context_length"] for r in rows] == [64, 256]
    for r in rows:
        assert set(r) == set(COST_COLUMNS)
        assert r["status"] == "ok" and r["error"] is None
        for k in ("prefill_s", "prefill_tokens_per_s", "decode_s_per_token"):
            assert math.isfinite(r[k]) and r[k] > 0
        assert r["prefill_tokens_per_s"] == pytest.approx(r["context_length"] / r["prefill_s"])
        assert r["peak_mem_bytes"] >= 0 and r["repeats"] == 2 and r["path"] == "reference"
        assert r["kv_cache_bytes"] == r["context_length"] * info["kv_bytes_per_token"] > 0
        assert r["fixed_state_bytes"] == info["fixed_state_bytes"] > 0
        assert r["flops_per_token"] == cost.analytic_flops_per_token(a.model.cfg, r["context_length"])
        assert r["model_id"] == type(a).identity(a.spec) and r["model"] == "t-hybrid"
        assert r["device"] == "cpu" and r["device_name"] and r["run_id"] == "r1" and r["model_info"] == info


def test_probe_accepts_a_bare_model_and_batches():
    model = NativeLM(NativeConfig.from_dict({"flavor": "debug", "ssm": "mamba"}))
    (r,) = cost.probe(model, [128], "cpu", repeats=1, batch=2, decode_tokens=2)
    assert r["status"] == "ok" and r["batch"] == 2 and r["kv_cache_bytes"] == 0
    assert r["fixed_state_bytes"] == 2 * model.describe()["fixed_state_bytes"]
    assert r["prefill_tokens_per_s"] == pytest.approx(2 * 128 / r["prefill_s"])


def test_decode_is_cheaper_than_prefill_at_long_length(tiny_models):
    (r,) = cost.probe(_adapter(tiny_models["t-attn"]), [2048], "cpu", repeats=2, decode_tokens=4)
    assert r["status"] == "ok" and r["decode_s_per_token"] < r["prefill_s"]


def test_too_long_is_recorded_not_tried_and_decode_stays_within_max_context(tiny_models):
    a = _adapter(tiny_models["t-mamba2"])  # debug flavor: max_context 4096
    rows = cost.probe(a, [4096, 8192], "cpu", repeats=1, decode_tokens=2)
    assert [r["status"] for r in rows] == ["ok", "too_long"]
    assert "exceeds the model's max_context of 4096" in rows[1]["error"]
    assert rows[1]["prefill_s"] is None and rows[1]["kv_cache_bytes"] == 0 and rows[1]["flops_per_token"] > 0


def test_simulated_oom_marks_longer_lengths_and_errors_do_not_stop_the_sweep(tiny_models, monkeypatch):
    a = _adapter(tiny_models["t-attn"])
    real = a.model.prefill
    tried: list[int] = []

    def prefill(ids, **kw):
        tried.append(ids.shape[1])
        if ids.shape[1] == 96:
            raise RuntimeError("simulated kernel failure")
        if ids.shape[1] >= 256:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(ids, **kw)

    monkeypatch.setattr(a.model, "prefill", prefill)
    rows = cost.probe(a, [64, 96, 128, 256, 512, 8192], "cpu", repeats=1, decode_tokens=2)
    assert [(r["context_length"], r["status"]) for r in rows] == [
        (64, "ok"), (96, "error"), (128, "ok"), (256, "oom"), (512, "oom"), (8192, "too_long")]
    assert "simulated kernel failure" in rows[1]["error"]
    assert "OutOfMemoryError" in rows[3]["error"] and "not tried" in rows[4]["error"]
    assert 512 not in tried  # after an OOM, longer lengths are not tried
    assert rows[4]["kv_cache_bytes"] == 512 * a.describe()["kv_bytes_per_token"]  # still known analytically


# --------------------------------------------------------------------------- evalkit run
def test_run_fills_costs_once_per_model_and_length(cli, tiny_models, tiny_task, tmp_path):
    out = tmp_path / "runs"
    models = f"{tiny_models['t-hybrid']},{tiny_models['t-mamba']}"
    code, stdout, err = cli("run", str(tiny_task), "--models", models, "-d", str(out))
    assert code == 0, err
    assert "cost probe: 4 (model, length) points measured in" in stdout
    rows = _rows(out)
    assert [(r["model"], r["context_length"], r["status"], r["batch"]) for r in rows] == [
        ("t-hybrid", 64, "ok", 1), ("t-hybrid", 128, "ok", 1), ("t-mamba", 64, "ok", 1), ("t-mamba", 128, "ok", 1)]
    cells = {r["model"]: r["model_id"] for r in _rows(out, "SELECT model, model_id FROM cells")}
    assert all(r["model_id"] == cells[r["model"]] for r in rows)
    run_ids = {r["run_id"] for r in _rows(out, "SELECT run_id FROM runs")}
    assert {r["run_id"] for r in rows} <= run_ids and all(r["prefill_s"] > 0 for r in rows)

    before = [tuple(r) for r in rows]
    code, stdout, _ = cli("run", str(tiny_task), "--models", models, "-d", str(out), "--lengths", "64,128")
    assert code == 0 and "cost probe" not in stdout  # nothing missing: not re-probed
    assert [tuple(r) for r in _rows(out)] == before

    # a new length (all its cells new) probes just that length
    code, stdout, _ = cli("run", str(tiny_task), "--models", str(tiny_models["t-mamba"]), "-d", str(out),
                          "--lengths", "96")
    assert code == 0 and "cost probe: 1 " in stdout and len(_rows(out)) == 5


def test_no_cost_skips_and_a_later_run_fills_in_reused_models(cli, tiny_models, tiny_task, tmp_path):
    out = tmp_path / "runs"
    m = str(tiny_models["t-attn"])
    code, stdout, _ = cli("run", str(tiny_task), "--models", m, "-d", str(out), "--no-cost")
    assert code == 0 and "cost probe" not in stdout and _rows(out) == []
    code, stdout, _ = cli("run", str(tiny_task), "--models", m, "-d", str(out))  # all cells reused
    assert code == 0 and "0 cells run, 4 reused" in stdout and "cost probe: 2 " in stdout
    assert [r["status"] for r in _rows(out)] == ["ok", "ok"]


def test_a_failing_probe_loses_no_recall_and_is_retried(cli, tiny_models, tiny_task, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    m = str(tiny_models["t-mamba2"])
    real = cost.probe

    def broken(*a, **k):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(cost, "probe", broken)
    code, stdout, _ = cli("run", str(tiny_task), "--models", m, "-d", str(out))
    assert code == 0 and "4 cells run" in stdout
    assert len(_rows(out, "SELECT * FROM cells WHERE status='complete'")) == 4
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["error", "error"] and "probe exploded" in rows[0]["error"]
    monkeypatch.setattr(cost, "probe", real)
    code, stdout, _ = cli("run", str(tiny_task), "--models", m, "-d", str(out))
    assert code == 0 and "cost probe: 2 " in stdout and [r["status"] for r in _rows(out)] == ["ok", "ok"]


# --------------------------------------------------------------------------- evalkit cost
def test_cost_cli_prints_table_exponent_and_stores_rows(cli, tiny_models, tmp_path):
    out = tmp_path / "c"
    code, stdout, err = cli("cost", str(tiny_models["t-attn"]), "--lengths", "64,256,1024,8192",
                            "--repeats", "2", "-d", str(out))
    assert code == 0, err
    for text in ("prefill ms", "decode ms/tok", "GFLOP/tok", "L=8192 too_long", "length^", "over 3 lengths", "RANDOM"):
        assert text in stdout
    rows = _rows(out)
    assert [(r["context_length"], r["status"]) for r in rows] == [(64, "ok"), (256, "ok"), (1024, "ok"), (8192, "too_long")]
    assert rows[0]["model_id"] == type(_adapter(tiny_models["t-attn"])).identity(load_model_spec(str(tiny_models["t-attn"])))
    assert _rows(out, "SELECT status, command FROM runs")[0]["status"] == "complete"


def test_cost_cli_arch_overrides(cli, tiny_models, tmp_path):
    out = tmp_path / "c"
    spec = str(tiny_models["t-hybrid"])
    code, stdout, err = cli("cost", spec, "--lengths", "64", "--repeats", "1", "--arch", "d_model=64",
                            "--arch", "n_layers=4", "-d", str(out))
    assert code == 0, err
    (r,) = _rows(out)
    assert r["model"] == "t-hybrid[d_model=64,n_layers=4]" and '"d_model": 64' in r["model_info"]
    assert '"n_layers": 4' in r["model_info"] and r["model_id"] != type(_adapter(tiny_models["t-hybrid"])).identity(
        load_model_spec(spec))
    big = NativeConfig.from_dict({"flavor": "debug", "ssm": "mamba2", "attention_fraction": 0.5, "d_model": 64, "n_layers": 4})
    assert r["flops_per_token"] == cost.analytic_flops_per_token(big, 64)


@pytest.mark.parametrize("args,needle", [
    (["--arch", "d_modle=64"], "unknown field 'd_modle'; did you mean 'd_model'?"),
    (["--arch", "d_model"], "expected KEY=VALUE"),
    (["--arch", "n_heads=3"], "must be divisible by n_heads"),
    (["--arch", "ssm=mamab2"], "did you mean 'mamba2'"),
    (["--lengths", "64,abc"], "expected comma-separated integers"),
    (["--repeats", "0"], "--repeats"),
])
def test_cost_cli_bad_input_exits_2(cli, tiny_models, tmp_path, args, needle):
    code, _, err = cli("cost", str(tiny_models["t-hybrid"]), *args, "-d", str(tmp_path / "c"))
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "c" / "evalkit.sqlite").exists()


def test_cost_cli_unknown_model_exits_2(cli, tmp_path):
    code, _, err = cli("cost", "hybird", "-d", str(tmp_path / "c"))
    assert code == 2 and "did you mean 'hybrid'" in err


# --------------------------------------------------------------------------- native options
def test_native_dtype_and_prefill_chunk_options(tiny_models):
    """``dtype`` changes the identity (float32 keeps the old one); ``prefill_chunk`` does not, is
    recorded in describe(), and the probe's prefill then runs in pieces with the same result."""
    import dataclasses

    spec = load_model_spec(str(tiny_models["t-hybrid"]))
    native = ADAPTERS.get("native")
    base = native.identity(spec)
    assert native.identity(dataclasses.replace(spec, options=(("dtype", "float32"),))) == base
    assert native.identity(dataclasses.replace(spec, options=(("dtype", "bfloat16"),))) != base
    chunked = dataclasses.replace(spec, options=(("prefill_chunk", 7),))
    assert native.identity(chunked) == base
    a, a_chunked = native(spec, "cpu"), native(chunked, "cpu")
    assert a_chunked.describe()["prefill_chunk"] == 7 and "prefill_chunk" not in a.describe()
    ids = torch.randint(0, a.model.cfg.vocab_size, (1, 50), generator=torch.Generator().manual_seed(0))
    calls = []  # the length of each piece the model embeds
    real = a_chunked.model.embed.forward
    a_chunked.model.embed.forward = lambda x: calls.append(x.shape[1]) or real(x)
    (logits, _), (logits_c, _) = a.prefill(ids), a_chunked.prefill(ids)
    assert calls == [7] * 7 + [1]
    torch.testing.assert_close(logits_c, logits, rtol=1e-4, atol=1e-5)
    bf16 = native(dataclasses.replace(spec, options=(("dtype", "bfloat16"),)), "cpu")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.describe()["dtype"] == "bfloat16"
    for bad, msg in (({"prefill_chunk": -1}, "positive"), ({"prefill_chunk": True}, "must be a int"),
                     ({"dtype": "float64"}, "one of"), ({"prefil_chunk": 4}, "did you mean")):
        with pytest.raises(ValueError, match=msg):
            native.validate_options(bad)


def test_cost_cli_options_reach_the_model_and_bad_ones_exit_2(cli, tiny_models, tmp_path):
    out = tmp_path / "c"
    code, stdout, err = cli("cost", str(tiny_models["t-attn"]), "--lengths", "64", "--repeats", "1",
                            "--decode-tokens", "2", "--prefill-chunk", "16", "-d", str(out))
    assert code == 0, err
    (row,) = _rows(out)
    assert row["status"] == "ok" and '"prefill_chunk": 16' in row["model_info"]
    code, _, err = cli("cost", str(tiny_models["t-attn"]), "--lengths", "64", "--dtype", "float64", "-d", str(out))
    assert code == 2 and "--dtype float64" in err and "one of" in err
    assert len(_rows(out)) == 1  # nothing written by the refused command


def test_probe_records_the_kernel_variants_that_ran(monkeypatch):
    """With the kernels on (Triton's interpreter here), the cost row names the kernel variants its
    timed prefills launched: the Mamba mixer's L-contiguous operands take the time-parallel scan,
    Mamba-2's chunked SSD its state-chunk path; both their convs the conv kernel."""
    pytest.importorskip("triton")
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":  # CPU tensors through Triton
        pytest.skip("needs Triton's interpreter (tests/conftest.py sets it without a GPU); on a GPU the cost "
                    "runs under kernels/ record the CUDA variants")
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    for ssm, want in (("mamba", "selective_scan:time2"), ("mamba2", "ssd:state-chunk-")):
        model = NativeLM(NativeConfig.from_dict({"flavor": "debug", "ssm": ssm, "attention_fraction": 0}))
        (r,) = cost.probe(model, [40], "cpu", repeats=1, decode_tokens=1)
        assert r["status"] == "ok" and r["path"] == "kernel", r["error"]
        conv, ran = r["model_info"]["kernel_variants"]  # sorted
        assert conv == "causal_conv1d:triton" and ran.startswith(want) and "kernel_variants" not in model.describe()
