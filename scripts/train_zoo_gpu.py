"""Train the shipped zoo on one GPU: every recipe in experiments/zoo/ at once, one process each.

    PYTHONPATH=. python scripts/train_zoo_gpu.py [--out DIR] [--only a,b] [--steps N] [--time-limit S]

The zoo's models are tiny (d_model 64): one alone leaves an H100 mostly idle (launch- and
Python-bound), so all recipes train concurrently as separate processes sharing the GPU, each
with its own CPU thread budget. Each writes its checkpoint dir (config.json, model.safetensors,
card.md, train_log.jsonl) under DIR/<name>/, then everything is packed into DIR/zoo.tar
(trainer_state.pt left out) to come back from the device machine; unpack it into models/zoo/.
``--steps`` / ``--time-limit`` / ``--max-length`` / ``--batch-tokens`` override the recipes (for a quick
CPU check of this script: ``--steps 20 --device cpu``, which also caps lengths at 512 and batches
at 2048 tokens unless told otherwise).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_MAX_LENGTH = 512
CPU_BATCH_TOKENS = 2048


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "zoo_out"))
    ap.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--time-limit", type=float)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--max-length", type=int,
                    help=f"longest training length (default: the recipes'; {CPU_MAX_LENGTH} with --device cpu)")
    ap.add_argument("--batch-tokens", type=int,
                    help=f"tokens per batch (default: the recipes'; {CPU_BATCH_TOKENS} with --device cpu)")
    a = ap.parse_args()
    if a.device == "cpu":
        # a CPU run is a smoke test of this script: the Mamba-1 PyTorch reference scan needs
        # ~14 GB of host memory for one 32 x 512-token batch, which GPU runs never see
        a.max_length = a.max_length or CPU_MAX_LENGTH
        a.batch_tokens = a.batch_tokens or CPU_BATCH_TOKENS
        print(f"--device cpu: lengths capped at {a.max_length}, {a.batch_tokens} tokens per batch "
              "(pass --max-length / --batch-tokens to change)", flush=True)
    out = Path(a.out).resolve()
    recipes = sorted((ROOT / "experiments" / "zoo").glob("*.yaml"))
    if a.only:
        keep = set(a.only.split(","))
        recipes = [r for r in recipes if r.stem in keep]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1"}
    procs = {}
    for r in recipes:
        cmd = [sys.executable, "-m", "evalkit.cli", "train", "--recipe", str(r.relative_to(ROOT)),
               "--out", str(out / r.stem), "--device", a.device]
        if a.steps:
            cmd += ["--steps", str(a.steps)]
        if a.time_limit:
            cmd += ["--time-limit", str(a.time_limit)]
        if a.max_length:
            cmd += ["--max-length", str(a.max_length)]
        if a.batch_tokens:
            cmd += ["--batch-tokens", str(a.batch_tokens)]
        (out / r.stem).mkdir(parents=True, exist_ok=True)
        log = open(out / f"{r.stem}.stdout", "w")
        procs[r.stem] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        print("started", " ".join(cmd), flush=True)
    t0 = time.time()
    codes = {}
    for name, (p, log) in procs.items():
        codes[name] = p.wait()
        log.close()
        print(f"{name}: exit {codes[name]} after {time.time() - t0:.0f} s", flush=True)
    with tarfile.open(out / "zoo.tar", "w") as tar:
        for name in procs:
            for f in sorted((out / name).iterdir()):
                if f.name != "trainer_state.pt":
                    tar.add(f, arcname=f"{name}/{f.name}")
            tar.add(out / f"{name}.stdout", arcname=f"{name}/stdout.txt")
    for name in procs:
        tail = (out / f"{name}.stdout").read_text().strip().splitlines()[-2:]
        print(f"== {name} (exit {codes[name]}):", *tail, sep="\n  ")
    sys.exit(1 if any(codes.values()) else 0)


if __name__ == "__main__":
    main()
