"""Mixer benchmark: tokens/s of each registered sequence mixer alone, and of the model specs
built from them, at the zoo's size (d_model 64, the `small` flavor).

    PYTHONPATH=. python benchmarks/mixers.py [--lengths 1024,4096] [--backward] [--models ...]

Per mixer: one layer, batches of 65,536 tokens (B = 65536 / L), ``forward`` under inference
mode (the teacher-forced evaluation path), optionally forward + backward (training), and
``step`` (decode: tokens/s over the batch). Per model: teacher-forced evaluation of the needle
task, as ``benchmarks/throughput.py`` measures it. Warm-up excluded, median of
``--repeats``, device synchronised before each timer stops, device printed. Numbers, not tests.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from evalkit.models.native import MIXERS, NativeConfig

TOKENS = 65536


CLOCK = time.perf_counter  # --cpu-time switches to time.process_time


def _timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = CLOCK()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def mixer_rates(name: str, L: int, device: str, repeats: int, backward: bool) -> dict[str, float]:
    """tokens/s of one mixer layer: forward, (forward + backward), decode step."""
    cfg = NativeConfig.from_dict({"flavor": "small", "window": 256})
    m = MIXERS.get(name)(cfg, 0)
    m.reset_parameters(torch.Generator().manual_seed(0))
    m = m.to(device)
    B = max(1, TOKENS // L)
    x = torch.randn(B, L, cfg.d_model, generator=torch.Generator().manual_seed(1)).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    out = {}
    with torch.inference_mode(), autocast:
        out["forward"] = B * L / _timed(lambda: m(x), device, repeats)
        _, state = m.prefill(x[:, : L // 2])
        steps = 16
        x_t = x[:, L // 2]

        def decode() -> None:
            s = state
            for _ in range(steps):
                _, s = m.step(x_t, s)

        out["decode"] = B * steps / _timed(decode, device, repeats)
    if backward:
        xg = x.clone().requires_grad_(True)

        def train_step() -> None:
            with autocast:
                y = m(xg)
            y.float().pow(2).mean().backward()

        out["fwd+bwd"] = B * L / _timed(train_step, device, repeats)
    return out


def model_rate(model: str, length: int, device: str, repeats: int) -> float:
    """tokens/s of a whole model spec, teacher-forced on the needle task (as throughput.py)."""
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.runner import TOKENS_PER_BATCH, make_sample, plan, render
    from evalkit.scoring import predict_teacher_forced
    from evalkit.spec import load_model_spec, load_task_spec

    cell = plan([load_task_spec("needle")], [load_model_spec(model)], lengths=[length])[0]
    adapter = NativeAdapter(cell.model, device)
    bs = max(1, TOKENS_PER_BATCH // length)
    batch = [render(cell, make_sample(cell, i % cell.n_samples)) for i in range(bs)]
    return bs * length / _timed(lambda: predict_teacher_forced(adapter, batch), device, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", default=",".join(MIXERS.names()))
    ap.add_argument("--models", default="s4d,swa,gated_deltanet,hybrid_s4d,hybrid_swa,hybrid_gdn,mamba2,transformer")
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="also time forward + backward")
    ap.add_argument("--cpu-time", action="store_true",
                    help="CPU only: one thread, timed in process CPU seconds — steadier than wall time "
                         "on a machine that other jobs share (on an idle one the two agree)")
    a = ap.parse_args()
    global CLOCK
    if a.cpu_time:
        torch.set_num_threads(1)
        CLOCK = time.process_time
    dev = (torch.cuda.get_device_name() if a.device == "cuda"
           else f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)")
    print(f"device: {a.device} — {dev}; torch {torch.__version__}; one layer, d_model 64, "
          f"{TOKENS:,} tokens per batch{', bf16 autocast' if a.device == 'cuda' else ''}"
          f"{'; tokens per CPU-second' if a.cpu_time else ''}")
    lengths = [int(x) for x in a.lengths.split(",")]
    kinds = ["forward", "decode"] + (["fwd+bwd"] if a.backward else [])
    cols = [f"{k} L={L}" for L in lengths for k in kinds]
    print(f"{'mixer':<16}" + "".join(f"{c:>18}" for c in cols) + "   (tokens/s)")
    for name in a.mixers.split(","):
        rates = {L: mixer_rates(name, L, a.device, a.repeats, a.backward) for L in lengths}
        print(f"{name:<16}" + "".join(f"{rates[L][k]:>18,.0f}" for L in lengths for k in kinds), flush=True)
    if a.models:
        print(f"\n{'model':<16}" + "".join(f"{'L=' + str(L):>14}" for L in lengths)
              + "   (tokens/s, teacher-forced eval of needle, whole model)")
        for model in a.models.split(","):
            row = [model_rate(model, L, a.device, a.repeats) for L in lengths]
            print(f"{model:<16}" + "".join(f"{v:>14,.0f}" for v in row), flush=True)


if __name__ == "__main__":
    main()
