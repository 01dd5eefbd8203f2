"""Harness benchmark (`make bench`): evaluation throughput per shipped model, and the wall time
of the main command on a fresh output directory.

Method: warm-up batch excluded, median of repeats, device synchronised before the timer stops,
device named. Prints a table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from evalkit.models.native_adapter import NativeAdapter
from evalkit.runner import TOKENS_PER_BATCH, make_sample, plan, render
from evalkit.scoring import predict_teacher_forced
from evalkit.spec import load_model_spec, load_task_spec


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(model: str, length: int, device: str, repeats: int) -> float:
    cells = plan([load_task_spec("needle")], [load_model_spec(model)], lengths=[length])
    cell = cells[0]
    adapter = NativeAdapter(cell.model, device)
    bs = max(1, TOKENS_PER_BATCH // length)
    batch = [render(cell, make_sample(cell, i % cell.n_samples)) for i in range(bs)]
    predict_teacher_forced(adapter, batch)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        predict_teacher_forced(adapter, batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return bs * length / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="transformer,mamba,mamba2,hybrid")
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-main", action="store_true", help="do not time the main command")
    a = ap.parse_args()
    dev_name = torch.cuda.get_device_name() if a.device == "cuda" else f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    print(f"device: {a.device} — {dev_name}; torch {torch.__version__}")
    lengths = [int(x) for x in a.lengths.split(",")]
    print(f"{'model':<12}" + "".join(f"{'L=' + str(L):>14}" for L in lengths) + "   (tokens/s, teacher-forced eval)")
    for m in a.models.split(","):
        row = [throughput(m, L, a.device, a.repeats) for L in lengths]
        print(f"{m:<12}" + "".join(f"{v:>14,.0f}" for v in row))
    if not a.skip_main:
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "evalkit.cli", "run", "tasks/needle.yaml", "--models", "hybrid,mamba",
                   "--output-dir", d, "--device", a.device]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            print(f"main command `evalkit run tasks/needle.yaml --models hybrid,mamba` (fresh store): "
                  f"{time.perf_counter() - t0:.1f} s wall")


if __name__ == "__main__":
    main()
