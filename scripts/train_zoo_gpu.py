"""Train the shipped zoo on one GPU: every recipe in experiments/zoo/ at once, one process each.

    PYTHONPATH=. python scripts/train_zoo_gpu.py [--out DIR] [--only a,b] [--steps N] [--time-limit S]

The zoo's models are tiny (d_model 64): one alone leaves an H100 mostly idle (launch- and
Python-bound), so all recipes train concurrently as separate processes sharing the GPU, each
with its own CPU thread budget. Each writes its checkpoint dir (config.json, model.safetensors,
card.md, train_log.jsonl) under DIR/<name>/, then everything is packed into DIR/zoo.tar
(trainer_state.pt left out) to come back from the device machine; unpack it into models/zoo/.
``--steps`` / ``--time-limit`` override the recipes (for a quick CPU check of this script).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "zoo_out"))
    ap.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--time-limit", type=float)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    a = ap.parse_args()
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
