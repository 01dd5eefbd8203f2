"""Training throughput of the zoo models in evalkit's own trainer (``evalkit.train.train``) on the
GPU: the Triton kernels against the PyTorch references, each with the step replayed as a CUDA
graph (the trainer's CUDA default) and run eagerly; then a GPU profile of one replayed step per
path (kernel count and GPU time per step, the top kernels).

Shape: the zoo recipe's (experiments/zoo/*.yaml: batch 16,384 tokens, the four zoo tasks with
their weights) at one length, 1,024 (so one batch shape), bf16 autocast, fixed training sets
(``pool``) so that sample generation in Python does not bound the step. Tokens/s is taken over
the steps after the first ``SKIP`` (which hold Triton's compiles and the graph capture), from the
trainer's own log windows.

    PYTHONPATH=. python kernels/train_speed.py [--models mamba2,hybrid,mamba] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from evalkit.spec import load_model_spec, load_task_spec
from evalkit.train import TrainConfig, read_log, train

TASKS = ["tasks/needle.yaml", "tasks/assoc_recall.yaml", "tasks/multi_query.yaml", "tasks/copy_number.yaml"]
SKIP = 10  # steps left out of the rate: compiles, the eager first step, the capture


def rate(out: Path) -> float:
    rows = [r for r in read_log(out / "train_log.jsonl") if r["event"] == "train" and r["step"] > SKIP]
    # each train row's tokens_per_s covers the 10 steps before it (batch_tokens each)
    secs = sum(10 * 16384 / r["tokens_per_s"] for r in rows)
    return 10 * 16384 * len(rows) / secs


def run(model: str, mode: str, graph: bool, steps: int, tmp: Path, device: str = "cuda") -> float:
    os.environ["EVALKIT_KERNELS"] = mode
    cfg = TrainConfig(steps=steps, batch_tokens=16384, lr=3e-3, max_length=1024, min_length=1024,
                      task_weights=(2, 1, 1, 1), eval_every=10 * steps, eval_samples=8, save_every=10 * steps,
                      pool=256, seed=0)
    out = tmp / f"{model}-{mode}-{int(graph)}"
    t0 = time.perf_counter()
    train(load_model_spec(f"models/{model}.yaml"), [load_task_spec(t) for t in TASKS], cfg, out, device=device,
          cuda_graph=graph, pool_dir=tmp / "pools", pool_workers=8)
    tps = rate(out)
    print(f"  ({model} {mode} {'graph' if graph else 'eager'}: {tps:,.0f} tok/s, run {time.perf_counter() - t0:.1f} s)",
          flush=True)
    return tps


def profile(model: str, mode: str, reps: int = 5) -> None:
    """Kernels per replayed step and their GPU time (torch.profiler sees the kernels a graph launches)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _GraphedStep

    os.environ["EVALKIT_KERNELS"] = mode
    torch.manual_seed(0)
    m = NativeLM(NativeAdapter.config(load_model_spec(f"models/{model}.yaml")), seed=0).cuda().train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True, capturable=True)
    step = _GraphedStep(m, opt, TrainConfig(), Path(os.devnull))
    ids = torch.randint(0, m.cfg.vocab_size, (16, 1024), device="cuda")
    tgt = torch.full_like(ids, -100)
    tgt[:, -16:] = ids[:, -16:]
    for s in range(3):
        step(ids, tgt, 1e-3, s)
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for s in range(reps):
            step(ids, tgt, 1e-3, 3 + s)
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in ev) / reps / 1e3
    count = sum(e.count for e in ev) / reps
    print(f"\n{model} / {'kernels' if mode == 'auto' else 'references'}, graphed step: {count:.0f} GPU ops, "
          f"{total:.3f} ms GPU time per step")
    print("| kernel | calls/step | ms/step |")
    print("|---|---|---|")
    for e in sorted(ev, key=lambda e: -e.self_device_time_total)[:10]:
        print(f"| {e.key[:70]} | {e.count / reps:.0f} | {e.self_device_time_total / reps / 1e3:.3f} |")


def replay_rate(model: str, mode: str, compiled: bool, reps: int = 30) -> float | str:
    """Tokens/s of the replayed step alone (``_GraphedStep``, batch 16 x 1024), with the loss (the
    whole model: glue, norms, projections, head) under ``torch.compile`` or not. An experiment:
    the trainer does not compile; this says whether fusing the PyTorch glue around the scans would
    pay (the profile shows it dominating the kernels' step)."""
    import torch.nn.functional as F  # noqa: F401

    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.train import _GraphedStep, _loss

    os.environ["EVALKIT_KERNELS"] = mode
    torch.manual_seed(0)
    m = NativeLM(NativeAdapter.config(load_model_spec(f"models/{model}.yaml")), seed=0).cuda().train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True, capturable=True)
    step = _GraphedStep(m, opt, TrainConfig(), Path(os.devnull))
    if compiled:
        step.loss_fn = torch.compile(_loss)
    # the batch from the CPU generator: a failed capture can leave the CUDA generator unusable
    ids = torch.randint(0, m.cfg.vocab_size, (16, 1024)).cuda()
    tgt = torch.full_like(ids, -100)
    tgt[:, -16:] = ids[:, -16:]
    try:
        t0 = time.perf_counter()
        for s in range(3):
            step(ids, tgt, 1e-3, s)
        torch.cuda.synchronize()
        setup = time.perf_counter() - t0
        if step.failed:
            print(f"  ({model} {mode} {'compiled' if compiled else 'plain'}: capture failed: {step.failed})", flush=True)
            return "capture failed"
        t0 = time.perf_counter()
        for s in range(reps):
            step(ids, tgt, 1e-3, 3 + s)
        torch.cuda.synchronize()
        tps = reps * ids.numel() / (time.perf_counter() - t0)
        print(f"  ({model} {mode} {'compiled' if compiled else 'plain'}: {tps:,.0f} tok/s, setup {setup:.1f} s)",
              flush=True)
        return tps
    except Exception as e:  # noqa: BLE001  (an experiment: report, go on)
        print(f"  ({model} {mode} {'compiled' if compiled else 'plain'}: {type(e).__name__}: {e})"[:600], flush=True)
        return type(e).__name__


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mamba2,hybrid,mamba")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--compile-only", action="store_true", help="only the torch.compile experiment")
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    if a.compile_only:
        print("\n## replayed step with the loss under torch.compile (experiment), tokens/s, batch 16 x 1024")
        print("| model | kernels | kernels, compiled | references | references, compiled | kernels compiled ÷ refs compiled |")
        print("|---|---|---|---|---|---|")
        for model in a.models.split(","):
            r = {(mode, c): replay_rate(model, mode, c) for c in (False, True) for mode in ("auto", "ref")}
            f = lambda x: f"{x:,.0f}" if isinstance(x, float) else x  # noqa: E731
            kc, rc = r["auto", True], r["ref", True]
            ratio = f"{kc / rc:.2f}x" if isinstance(kc, float) and isinstance(rc, float) else "–"
            print(f"| {model} | {f(r['auto', False])} | {f(kc)} | {f(r['ref', False])} | {f(rc)} | {ratio} |")
        return
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for model in a.models.split(","):
            for mode in ("auto", "ref"):
                for graph in (True, False):
                    res[model, mode, graph] = run(model, mode, graph, a.steps, Path(d))
    print("\n## training tokens/s in evalkit's trainer (batch 16 x 1024, bf16 autocast, pool), steps "
          f"{SKIP + 1}-{a.steps}")
    print("| model | kernels, graph | kernels, eager | references, graph | references, eager | "
          "kernels ÷ refs (both graphed) | kernels ÷ refs (both eager) | kernels graph ÷ refs eager |")
    print("|---|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        kg, ke, rg, re_ = (res[model, m, g] for m, g in (("auto", True), ("auto", False), ("ref", True), ("ref", False)))
        print(f"| {model} | {kg:,.0f} | {ke:,.0f} | {rg:,.0f} | {re_:,.0f} | {kg / rg:.2f}x | {ke / re_:.2f}x | "
              f"{kg / re_:.2f}x |")
    if not a.no_profile:
        for model in a.models.split(",")[:1]:
            for mode in ("auto", "ref"):
                profile(model, mode)
    os.environ.pop("EVALKIT_KERNELS", None)


if __name__ == "__main__":
    main()
