"""Training throughput of the zoo models in evalkit's own trainer (``evalkit.train.train``) on the
GPU: the Triton kernels against the PyTorch references, each with the step replayed as a CUDA
graph (the trainer's CUDA default), run eagerly, and replayed with the model under torch.compile
(``--compile``); then a GPU profile of one replayed step per
path (kernel count and GPU time per step, the top kernels).

Shape: the zoo recipe's (experiments/zoo/*.yaml: batch 16,384 tokens, the four zoo tasks with
their weights) at one length, 1,024 (so one batch shape), bf16 autocast, fixed training sets
(``pool``) so that sample generation in Python does not bound the step. Tokens/s is taken over
the steps after the first ``SKIP`` (which hold Triton's compiles and the graph capture), from the
trainer's own log windows.

    PYTHONPATH=. python kernels/train_speed.py [--models mamba2,hybrid,mamba] [--steps 50]
        [--compile-models mamba2,hybrid] [--skip-plain mamba2] [--no-profile] [--profile-compile]

``--profile-compile``: the profiled step runs its model and loss under torch.compile, as ``--compile`` trains.
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


def run(model: str, mode: str, graph: bool, steps: int, tmp: Path, device: str = "cuda",
        compile: bool = False) -> float:
    os.environ["EVALKIT_KERNELS"] = mode
    cfg = TrainConfig(steps=steps, batch_tokens=16384, lr=3e-3, max_length=1024, min_length=1024,
                      task_weights=(2, 1, 1, 1), eval_every=10 * steps, eval_samples=8, save_every=10 * steps,
                      pool=256, seed=0)
    out = tmp / f"{model}-{mode}-{int(graph)}-{int(compile)}"
    t0 = time.perf_counter()
    train(load_model_spec(f"models/{model}.yaml"), [load_task_spec(t) for t in TASKS], cfg, out, device=device,
          cuda_graph=graph, compile=compile, pool_dir=tmp / "pools", pool_workers=8)
    tps = rate(out)
    how = ("graph" if graph else "eager") + (" + compile" if compile else "")
    fails = [r for r in read_log(out / "train_log.jsonl") if r["event"] == "graph" and "error" in r]
    print(f"  ({model} {mode} {how}: {tps:,.0f} tok/s, run {time.perf_counter() - t0:.1f} s"
          + (f"; capture failed, eager: {fails[0]['error']}" if fails else "") + ")", flush=True)
    return tps


def profile(model: str, mode: str, reps: int = 5, compile: bool = False) -> None:
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
    step = _GraphedStep(m, opt, TrainConfig(), Path(os.devnull), compile=compile)
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
    how = "graphed + compiled" if compile else "graphed"
    print(f"\n{model} / {'kernels' if mode == 'auto' else 'references'}, {how} step: {count:.0f} GPU ops, "
          f"{total:.3f} ms GPU time per step")
    print("| kernel | calls/step | ms/step |")
    print("|---|---|---|")
    for e in sorted(ev, key=lambda e: -e.self_device_time_total)[:12]:
        print(f"| {e.key[:70]} | {e.count / reps:.0f} | {e.self_device_time_total / reps / 1e3:.3f} |")
    groups: dict[str, list[float]] = {}
    for e in ev:
        g = groups.setdefault(kind_of(e.key), [0.0, 0.0])
        g[0] += e.count / reps
        g[1] += e.self_device_time_total / reps / 1e3
    print("| group (by kernel name) | calls/step | ms/step | share |")
    print("|---|---|---|---|")
    for k, (n, t) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"| {k} | {n:.0f} | {t:.3f} | {t / total:.0%} |")


KINDS = (("attention", ("flash", "fmha", "attention", "sdpa")), ("ssd", ("ssd",)),
         ("selective scan", ("selective_scan",)), ("conv1d", ("conv1d", "causal_conv", "_conv_", "conv_depthwise")),
         ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "gemv")), ("optimizer", ("adam", "foreach")),
         ("inductor-fused", ("triton_",)))


def kind_of(name: str) -> str:
    """A coarse group for a GPU kernel's name (first match in KINDS; 'other' when none)."""
    low = name.lower()
    return next((k for k, keys in KINDS if any(x in low for x in keys)), "other")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mamba2,hybrid,mamba")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-compile", action="store_true", help="profile the step under torch.compile")
    ap.add_argument("--compile-models", default=None,
                    help="models also trained with --compile (default: all of --models; '' for none)")
    ap.add_argument("--skip-plain", default="", help="models whose graph/eager runs are skipped (measured before)")
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    res = {}
    models = a.models.split(",")
    compiled = models if a.compile_models is None else [m for m in a.compile_models.split(",") if m]
    skip = a.skip_plain.split(",")
    with tempfile.TemporaryDirectory() as d:
        for model in models:
            for mode in ("auto", "ref"):
                for graph, comp in ((True, False), (False, False), (True, True)):
                    if (comp and model not in compiled) or (not comp and model in skip):
                        res[model, mode, graph, comp] = None
                        continue
                    try:
                        res[model, mode, graph, comp] = run(model, mode, graph, a.steps, Path(d), compile=comp)
                    except Exception as e:  # noqa: BLE001  (one failed configuration: report it, go on)
                        print(f"  ({model} {mode} graph={graph} compile={comp}: {type(e).__name__}: {e})"[:500])
                        res[model, mode, graph, comp] = None
    f = lambda x: "–" if x is None else f"{x:,.0f}"  # noqa: E731
    q = lambda x, y: "–" if x is None or y is None else f"{x / y:.2f}x"  # noqa: E731
    print("\n## training tokens/s in evalkit's trainer (batch 16 x 1024, bf16 autocast, pool), steps "
          f"{SKIP + 1}-{a.steps}")
    print("| model | path | graph | eager | graph + compile |")
    print("|---|---|---|---|---|")
    for model in models:
        for mode, name in (("auto", "kernels"), ("ref", "references")):
            r = [res[model, mode, g, c] for g, c in ((True, False), (False, False), (True, True))]
            print(f"| {model} | {name} | {' | '.join(f(x) for x in r)} |")
    print("\n| model | kernels ÷ refs, both graphed | both eager | both graphed + compiled | "
          "kernels graphed ÷ refs eager |")
    print("|---|---|---|---|---|")
    for model in models:
        k = {(g, c): res[model, "auto", g, c] for g, c in ((True, False), (False, False), (True, True))}
        r = {(g, c): res[model, "ref", g, c] for g, c in ((True, False), (False, False), (True, True))}
        print(f"| {model} | {q(k[True, False], r[True, False])} | {q(k[False, False], r[False, False])} | "
              f"{q(k[True, True], r[True, True])} | {q(k[True, False], r[False, False])} |")
    if not a.no_profile:
        for model in a.models.split(",")[:1]:
            for mode in ("auto", "ref"):
                profile(model, mode, compile=a.profile_compile)
    os.environ.pop("EVALKIT_KERNELS", None)


if __name__ == "__main__":
    main()
