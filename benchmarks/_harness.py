"""What the harness-vs-harness benchmarks share (``lmeval_speed.py``, ``ruler_speed.py``).

Each harness runs as the command a user would type, in a fresh process; this module times it
(wall clock, and CPU seconds of its whole process tree), runs lm-eval's own RULER tasks on a
local checkpoint, reads evalkit's scores back from its store, and compares scores within
sampling error.

**Threads.** Both harnesses get the same ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (default 1).
On a shared CPU box an OpenMP team of two threads that loses one core to another process makes
every tensor operation wait for the descheduled thread: the same forward pass then takes many
times longer, in wall *and* CPU time (the waiting thread spins). One thread per harness measures
the work itself; ``--threads 0`` leaves torch's default.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CKPT = HERE / "checkpoints" / "tiny-llama-niah"
RULER_SAMPLES = 500  # documents lm-eval's RULER generates per length (lm_eval/tasks/ruler/niah_utils.py)


@dataclass(frozen=True)
class Timed:
    """One finished command: wall seconds, CPU seconds (user + system of its process tree), stdout."""

    wall: float
    cpu: float
    stdout: str


def bin_path(name: str) -> str:
    """A console script of this interpreter's environment (the venv's ``lm_eval``, ``evalkit``)."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def bench_env(threads: int) -> dict[str, str]:
    """The environment both harnesses run in: offline, and ``threads`` math threads (0: default)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads > 0:
            env[var] = str(threads)
        else:
            env.pop(var, None)
    return env


def timed(cmd: list[str], env: dict[str, str]) -> Timed:
    """Run ``cmd`` to completion; exit the benchmark with its output if it fails. CPU time comes
    from ``RUSAGE_CHILDREN``: every descendant the command waited for is included."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Timed(wall, cpu, out.stdout)


def median_timed(runs: list[Timed]) -> Timed:
    """Median wall and median CPU of repeated runs of one command."""
    return Timed(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs), runs[-1].stdout)


def floor_command(ckpt: Path) -> list[str]:
    """What any transformers-based harness pays before its first sample: start Python, import torch
    and transformers' causal-LM stack, load ``ckpt``'s model and tokenizer. Timed on its own, it
    shows how much of each harness's time is its own work."""
    code = ("import torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"AutoModelForCausalLM.from_pretrained({str(ckpt)!r}, dtype=torch.float32)\n"
            f"AutoTokenizer.from_pretrained({str(ckpt)!r})\n")
    return [sys.executable, "-c", code]


def fit_fixed_and_per_sample(ns: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares ``seconds = fixed + per_sample * n`` over runs with ``ns`` samples per length."""
    mean_n, mean_s = statistics.fmean(ns), statistics.fmean(seconds)
    var = sum((n - mean_n) ** 2 for n in ns)
    slope = sum((n - mean_n) * (s - mean_s) for n, s in zip(ns, seconds)) / var if var else 0.0
    return mean_s - slope * mean_n, slope


def lm_eval_command(ckpt: Path, task: str, lengths: list[int], n: int, batch: int, out_dir: Path) -> list[str]:
    """lm-eval's own RULER ``task`` on ``ckpt`` (``--model hf``, greedy, its 128-token budget):
    the first ``n`` documents of *each* length. ``--limit n`` would take the first n documents of
    the whole dataset, i.e. of the first length only, so the documents are picked with
    ``--samples`` (indices into the RULER_SAMPLES documents lm-eval generates per length)."""
    picks = [i * RULER_SAMPLES + j for i in range(len(lengths)) for j in range(n)]
    return [bin_path("lm_eval"), "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=float32",
            "--tasks", task, "--metadata", json.dumps({"max_seq_lengths": lengths}),
            "--samples", json.dumps({task: picks}), "--device", "cpu", "--batch_size", str(batch),
            "--output_path", str(out_dir)]


def lm_eval_scores(out_dir: Path, task: str, lengths: list[int]) -> dict[int, float]:
    """Per-length score of ``task`` from lm-eval's results file (RULER's metric names are lengths)."""
    [res] = list(out_dir.rglob("results_*.json"))
    scores = json.loads(res.read_text())["results"][task]
    return {n: float(scores[f"{n},none"]) for n in lengths}


def evalkit_counts(store: Path) -> dict[str, dict[int, tuple[int, int]]]:
    """spec → context length → (samples right, samples) from an evalkit store."""
    import evalkit

    df = evalkit.load(store)
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for (spec, length), g in df.groupby(["spec", "context_length"]):
        out.setdefault(str(spec), {})[int(length)] = (int(g["correct"].sum()), len(g))
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson interval (evalkit's own, so both sides are judged the same way)."""
    from evalkit.stats import wilson as _wilson

    return _wilson(k, n)


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    """|z| of the pooled two-proportion test; 0 when both are constant and equal."""
    pool = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    return 0.0 if se == 0 else abs(k1 / n1 - k2 / n2) / se


def machine_line(load_before: float, threads: int) -> str:
    """Where and under what load the numbers were taken."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
            f"python {platform.python_version()}, math threads per harness: {threads or 'default'}, "
            f"load average before {load_before:.1f}, after {os.getloadavg()[0]:.1f}")


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
