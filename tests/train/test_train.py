"""The trainer (evalkit/train.py): it learns, it is reproducible, it resumes, it logs, it refuses
bad input. CPU, debug flavor, tiny lengths: each run takes seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from testutil import write
from evalkit.spec import load_model_spec, load_task_spec
from evalkit.train import TrainConfig, TrainError, read_log, train, train_batch

NEEDLE = """\
task: needle
lengths: [16]
samples: 8
seed: 0
params: {depth: [0.0, 0.5, 1.0], key_len: 1, value_len: 1}
"""


@pytest.fixture
def specs(tmp_path: Path) -> tuple:
    m = write(tmp_path / "m.yaml", "name: dbg\nkind: native\narch: {flavor: debug, attention_fraction: 1.0}\n")
    t = write(tmp_path / "needle16.yaml", NEEDLE)
    return load_model_spec(str(m)), [load_task_spec(str(t))]


def quick(**kw) -> TrainConfig:
    base = dict(steps=6, batch_tokens=256, lr=1e-2, eval_every=3, eval_samples=8, save_every=2)
    return TrainConfig(**{**base, **kw})


def weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def test_debug_transformer_learns_needle_far_above_chance(specs, tmp_path):
    """Chance is 1/128 (one value token); 100-200 steps reach 1.0 in practice."""
    model, tasks = specs
    r = train(model, tasks, TrainConfig(steps=300, batch_tokens=512, lr=1e-2, eval_every=50, eval_samples=64,
                                        target_acc=0.98), tmp_path / "out", device="cpu")
    assert r.eval_acc["needle16"] >= 0.9
    assert r.stopped == "target_acc" and r.steps < 300
    # the checkpoint loads through the native adapter (the `evalkit run` path)
    from evalkit.models.native.lm import NativeLM

    assert NativeLM.from_pretrained(tmp_path / "out").cfg.attention_fraction == 1.0


def test_same_seed_same_weights_other_seed_other_weights(specs, tmp_path):
    model, tasks = specs
    a = train(model, tasks, quick(), tmp_path / "a", device="cpu").out_dir
    b = train(model, tasks, quick(), tmp_path / "b", device="cpu").out_dir
    c = train(model, tasks, quick(seed=1), tmp_path / "c", device="cpu").out_dir
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_after_interruption_equals_uninterrupted_run(specs, tmp_path):
    model, tasks = specs
    full = train(model, tasks, quick(), tmp_path / "full", device="cpu").out_dir
    with pytest.raises(KeyboardInterrupt):
        train(model, tasks, quick(), tmp_path / "cut", device="cpu", stop_after=3)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    r = train(model, tasks, quick(), tmp_path / "cut", device="cpu", resume=True)
    assert r.steps == 6
    wf, wr = weights(full), weights(tmp_path / "cut")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    rows = read_log(tmp_path / "cut" / "train_log.jsonl")
    assert [r["event"] for r in rows][:1] == ["start"] and "resume" in [r["event"] for r in rows]
    evals = [r["step"] for r in rows if r["event"] == "eval"]
    assert evals == [3, 6]  # no duplicate rows from the lost part of the run


def test_resume_refuses_a_different_config(specs, tmp_path):
    model, tasks = specs
    with pytest.raises(KeyboardInterrupt):
        train(model, tasks, quick(), tmp_path / "o", device="cpu", stop_after=2)
    with pytest.raises(TrainError, match="different model or training config"):
        train(model, tasks, quick(lr=1e-3), tmp_path / "o", device="cpu", resume=True)


def test_log_card_and_bf16_checkpoint(specs, tmp_path):
    model, tasks = specs
    out = tmp_path / "o"
    train(model, tasks, quick(save_dtype="bfloat16"), out, device="cpu", command="evalkit train x")
    rows = read_log(out / "train_log.jsonl")
    assert rows[0]["event"] == "start" and rows[0]["command"] == "evalkit train x"
    assert rows[0]["device"] == "cpu" and rows[0]["lengths"] == [16]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert train_rows and {"step", "loss", "lr", "tokens_per_s", "wall_s", "length", "task"} <= set(train_rows[0])
    assert [r["step"] for r in rows if r["event"] == "eval"] == [3, 6]
    assert all(0 <= r["acc"]["needle16"] <= 1 for r in rows if r["event"] == "eval")
    end = rows[-1]
    assert end["event"] == "end" and end["step"] == 6 and end["tokens"] == 6 * 16 * 16
    assert weights(out)["embed.weight"].dtype == torch.bfloat16
    from evalkit.models.native.lm import NativeLM

    m = NativeLM.from_pretrained(out)  # bf16 file → fp32 model, values kept
    assert m.embed.weight.dtype == torch.float32
    assert torch.equal(m.embed.weight, weights(out)["embed.weight"].float())
    card = (out / "card.md").read_text()
    assert "evalkit train x" in card and "| needle16 | 16 |" in card


def test_training_samples_are_not_the_evaluation_samples(specs):
    from evalkit.runner import make_sample, plan, render

    model, tasks = specs
    cells = plan(tasks, [model])
    held_out = {render(c, make_sample(c, i)).input_ids for c in cells for i in range(8)}
    trained = {r.input_ids for s in range(20) for r in train_batch(tasks[0], 0, s, 16, 8)}
    assert len(trained) == 160 and not trained & held_out


def test_curriculum_grows_to_the_longest_length(tmp_path, specs):
    model, _ = specs
    t = write(tmp_path / "n.yaml", NEEDLE.replace("[16]", "[16, 32, 64]"))
    r = train(model, [load_task_spec(str(t))], quick(steps=8, eval_every=8, curriculum=0.5), tmp_path / "o",
              device="cpu")
    rows = read_log(r.out_dir / "train_log.jsonl")
    assert rows[0]["lengths"] == [16, 32, 64]
    assert [x["length"] for x in rows if x["event"] == "eval"] == [64]


@pytest.mark.parametrize("args, msg", [
    (["--task", "no_such_task", "--steps", "2"], "unknown task"),
    (["--task", "needle", "--steps", "0"], "--steps must be >= 1"),
    ([], "no task given"),
    (["--task", "needle", "--lr", "-1"], "--lr must be > 0"),
    (["--task", "needle", "--cuda-graph"], "CUDA graphs need a CUDA device"),
])
def test_bad_input_exits_2(cli, specs, tmp_path, args, msg):
    code, out, err = cli("train", specs[0].path, *args, "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2, (out, err)
    assert msg in err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_cli_trains_and_writes_checkpoint(cli, specs, tmp_path):
    code, out, err = cli("train", specs[0].path, "--task", specs[1][0].path, "--steps", "4", "--batch-tokens",
                         "128", "--out", str(tmp_path / "o"), "--device", "cpu", "--seed", "3")
    assert code == 0, (out, err)
    assert "trained dbg: 4 steps" in out
    assert {"config.json", "model.safetensors", "train_log.jsonl", "card.md", "trainer_state.pt"} <= {
        p.name for p in (tmp_path / "o").iterdir()}


def test_tasks_train_only_at_lengths_they_fit_and_secondary_metrics_are_logged(specs, tmp_path):
    """A curriculum stage too short for one task trains the others; the eval rows carry the
    teacher-forced secondary metric (query_acc) that whole-answer accuracy hides."""
    model, tasks = specs
    ar = write(tmp_path / "ar.yaml", "task: assoc_recall\nlengths: [64]\nsamples: 8\nparams: {num_pairs: 8}\n")
    specs2 = [tasks[0], load_task_spec(str(ar))]  # needle16 fits 16 and 64; 8 pairs need 49 tokens
    r = train(model, specs2, quick(steps=8, eval_every=4, curriculum=0.0), tmp_path / "o", device="cpu")
    rows = read_log(r.out_dir / "train_log.jsonl")
    assert rows[0]["lengths"] == [16, 64]
    assert {x["length"] for x in rows if x["event"] == "train" and x["task"] == "ar"} == {64}
    ev = [x for x in rows if x["event"] == "eval"][-1]
    assert ev["lengths"] == {"needle16": 64, "ar": 64}
    assert set(ev["secondary"]) == {"needle16", "ar"} and ev["secondary"]["needle16"] == {}
    assert 0.0 <= ev["secondary"]["ar"]["query_acc"] <= 1.0
    assert "query_acc" in (r.out_dir / "card.md").read_text()


def test_a_task_that_fits_no_training_length_is_refused(specs, tmp_path):
    model, _ = specs
    ar = write(tmp_path / "ar.yaml", "task: assoc_recall\nlengths: [64]\nsamples: 8\nparams: {num_pairs: 8}\n")
    with pytest.raises(TrainError, match="training length 32"):
        train(model, [load_task_spec(str(ar))], quick(max_length=32), tmp_path / "o", device="cpu")
    assert not (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.parametrize("all_token_weight", [0.0, 0.5])
def test_sync_free_loss_is_the_masked_loss(specs, all_token_weight):
    """The CUDA-graph step's loss (head on every position, ignore_index) is the eager step's
    (head on the answer positions only): the same value and the same gradients."""
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _loss, _targets

    model = NativeLM(NativeAdapter.config(specs[0]), seed=0)
    ids, tgt = _targets(train_batch(specs[1][0], 0, 0, 16, 6))
    assert 0 < int((tgt != -100).sum()) < tgt.numel()
    out = []
    for sync_free in (False, True):
        model.zero_grad()
        loss = _loss(model, ids, tgt, all_token_weight, sync_free=sync_free)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = out
    assert torch.allclose(l0, l1, rtol=1e-6, atol=1e-7)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g0, g1))


def test_state_saved_by_a_graphed_run_resumes_anywhere(tmp_path):
    """A graphed run's AdamW holds its learning rate as a device tensor and is fused and
    capturable: the saved state stores the learning rate as a number, and a resumed run takes its
    own implementation flags (a CPU run cannot step a fused optimiser)."""
    from evalkit.train import _restore_flags, _save_state

    w = torch.nn.Parameter(torch.randn(3, 3))
    opt = torch.optim.AdamW([w], lr=torch.tensor(0.01))
    w.grad = torch.ones(3, 3)
    opt.step()
    _save_state(tmp_path / "s.pt", torch.nn.Linear(1, 1), opt, 1, 0.0, 0, TrainConfig(), _Cfg())
    saved = torch.load(tmp_path / "s.pt", weights_only=False)["optimizer"]
    assert saved["param_groups"][0]["lr"] == pytest.approx(0.01) and isinstance(saved["param_groups"][0]["lr"], float)
    saved["param_groups"][0].update(fused=True, capturable=True)  # as a CUDA graphed run saves it
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = torch.optim.AdamW([w2], lr=0.01)
    flags = {k: opt2.param_groups[0][k] for k in ("fused", "capturable", "foreach")}
    opt2.load_state_dict(saved)
    _restore_flags(opt2, flags)
    assert opt2.param_groups[0]["fused"] in (None, False) and not opt2.param_groups[0]["capturable"]
    w2.grad = torch.ones(3, 3)
    opt2.step()  # steps on the CPU
    assert int(opt2.state[w2]["step"]) == 2


class _Cfg:
    def to_dict(self) -> dict:
        return {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_training_matches_eager_training(specs, tmp_path):
    """On a GPU: the same run with the step replayed as CUDA graphs (two batch shapes, so two
    graphs) and eagerly; the losses follow each other (bf16 autocast: not bitwise) and the log
    records each capture without an error."""
    model, tasks = specs
    t = write(tmp_path / "needle.yaml", NEEDLE.replace("lengths: [16]", "lengths: [16, 32]"))
    tasks = [load_task_spec(str(t))]
    cfg = quick(steps=30, eval_every=30, save_every=30, curriculum=0.0, lr=3e-3)
    runs = {}
    for graph in (False, True):
        r = train(model, tasks, cfg, tmp_path / f"g{int(graph)}", device="cuda", cuda_graph=graph)
        rows = read_log(r.out_dir / "train_log.jsonl")
        runs[graph] = [x["loss"] for x in rows if x["event"] == "train"], [x for x in rows if x["event"] == "graph"]
    (eager, none), (graphed, captures) = runs[False], runs[True]
    assert none == [] and len(captures) == 2 and all("error" not in c for c in captures), captures
    assert {tuple(c["shape"]) for c in captures} == {(16, 16), (8, 32)}
    assert len(eager) == len(graphed) == 3
    for a, b in zip(eager, graphed):
        assert abs(a - b) < 0.05 * max(1.0, abs(a)), (eager, graphed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compile", [False, True])
def test_graphed_step_replays_the_eager_step(specs, compile):
    """On a GPU: ``_GraphedStep`` replayed on fresh batches and learning rates gives the weights
    that the same step run eagerly gives (same kernels, same order): a graph that kept a stale
    batch, a stale learning rate or accumulated gradients would drift far from it. Compiled, the
    fused kernels round differently (bf16), so the weights' drift from the eager run must stay
    small against how far training moved them."""
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _GraphedStep, _targets

    cfg = quick()
    runs = []
    w0 = [p.detach().clone() for p in NativeLM(NativeAdapter.config(specs[0]), seed=0).parameters()]
    for graph in (False, True):
        model = NativeLM(NativeAdapter.config(specs[0]), seed=0).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True, capturable=True)
        step = _GraphedStep(model, opt, cfg, Path("/dev/null"), compile=graph and compile)
        step.ready = not graph  # eager: never capture
        step.failed = None if graph else "eager by choice"
        for s in range(6):
            ids, tgt = _targets(train_batch(specs[1][0], 0, s, 16, 8))
            step(ids.cuda(), tgt.cuda(), 1e-2 * (s + 1) / 6, s)
        torch.cuda.synchronize()
        runs.append((step, [p.detach().clone() for p in model.parameters()]))
    (eager, w_e), (graphed, w_g) = runs
    assert len(graphed.graphs) == 1 and graphed.failed is None
    if not compile:
        for a, b in zip(w_e, w_g):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    else:
        moved = sum(float((a - b.cuda()).norm() ** 2) for a, b in zip(w_e, w0)) ** 0.5
        drift = sum(float((a - b).norm() ** 2) for a, b in zip(w_e, w_g)) ** 0.5
        assert drift < 0.2 * moved, (drift, moved)


def test_compiled_loss_leaves_the_scans_out_of_the_graph(tmp_path, monkeypatch):
    """``--compile``'s mechanism on the CPU: ``torch.compile`` of the loss gives the eager loss
    and gradients, and the scan (a Triton kernel here, under the interpreter) runs as plain Python
    on every call: a traced op would be counted once, when compiled, and then replayed from the
    graph without going through evalkit's dispatch."""
    import os

    from evalkit.kernels import dispatch
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _loss

    pytest.importorskip("triton")
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        # on a GPU, test_graphed_step_replays_the_eager_step[True] covers the compiled step
        pytest.skip("CPU tensors through the kernels need Triton's interpreter (tests/conftest.py sets it)")
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    spec = write(tmp_path / "m.yaml", "name: dbg\nkind: native\narch: {flavor: debug, ssm: mamba2, "
                 "attention_fraction: 0.0}\n")
    model = NativeLM(NativeAdapter.config(load_model_spec(str(spec))), seed=0)
    n_ops = 2 * sum(type(m).__name__ == "Mamba2" for m in model.modules())  # a conv and a scan per layer
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 32), generator=gen)
    tgt = torch.full_like(ids, -100)
    tgt[:, -4:] = ids[:, -4:]

    def run(fn):
        model.zero_grad()
        before = dispatch.kernel_calls()
        loss = fn(model, ids, tgt, 0.0, sync_free=True)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()], dispatch.kernel_calls() - before

    l0, g0, k0 = run(_loss)
    dispatch.prepare_compile()
    compiled = torch.compile(_loss)
    try:
        for _ in range(2):
            l1, g1, k1 = run(compiled)
            assert k1 == k0 == n_ops > 0
            assert torch.allclose(l0, l1, rtol=1e-5)
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))
    finally:
        torch._dynamo.reset()


def test_a_compile_failure_falls_back_to_the_uncompiled_step(specs, tmp_path):
    """If the compiled model raises (a mixer torch.compile cannot handle), the step runs uncompiled
    from then on and the log says why, instead of ending the run."""
    import warnings

    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _GraphedStep, _targets

    model = NativeLM(NativeAdapter.config(specs[0]), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    log = tmp_path / "log.jsonl"
    log.write_text("")
    step = _GraphedStep(model, opt, quick(), log)
    step.failed = "no capture on a CPU"  # eager steps only

    def broken(*a, **k):
        raise RuntimeError("inductor could not lower this op")

    step.loss_fn = broken
    before = [p.detach().clone() for p in model.parameters()]
    ids, tgt = _targets(train_batch(specs[1][0], 0, 0, 16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast("cuda") on a CPU-only machine
        loss, _ = step(ids, tgt, 1e-2, 0)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    rows = read_log(log)
    assert rows and rows[0]["event"] == "compile" and "inductor could not lower" in rows[0]["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", ["transformer", "mamba", "mamba2", "swa", "s4d", "gated_deltanet"])
def test_every_shipped_mixer_trains_graphed(name):
    """On a GPU: each mixer family of the shipped zoo captures (no fallback to eager) and its
    replayed steps give the eager steps' weights."""
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _GraphedStep

    cfg = NativeAdapter.config(load_model_spec(f"models/{name}.yaml"))
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.vocab_size, (4, 256), generator=gen) for _ in range(5)]
    weights = []
    for graph in (False, True):
        model = NativeLM(cfg, seed=0).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True, capturable=True)
        step = _GraphedStep(model, opt, TrainConfig(), Path("/dev/null"))
        step.failed = None if graph else "eager by choice"
        for s, ids in enumerate(batches):
            tgt = torch.full_like(ids, -100)
            tgt[:, -8:] = ids[:, -8:]
            step(ids.cuda(), tgt.cuda(), 1e-3, s)
        torch.cuda.synchronize()
        if graph:
            assert step.failed is None and len(step.graphs) == 1, step.failed
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
