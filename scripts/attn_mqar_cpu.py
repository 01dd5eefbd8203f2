"""Does a 2-layer attention model learn MQAR once no answer is model input? (CPU, a few minutes a run)

Trains experiments/attn_mqar/model.yaml (2 attention layers, d_model 64, no MLP) with
experiments/attn_mqar/recipe.yaml (256 sequences a step, lr 3e-3, 1,000 steps) on the same 4-pair,
32-token MQAR written three ways — answers shown (the default), answers hidden, and Zoology's
``key 0`` (hidden answers, bare queries) — for several seeds, then evaluates each checkpoint with
``evalkit.run`` (256 held-out samples) and prints per-query accuracy by query index.

    python scripts/attn_mqar_cpu.py --seeds 0,1,2,3 --jobs 2 --out /tmp/attn_mqar

Runs whose checkpoint exists are not trained again. Results of 2026-11-23 are in docs/training.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMS = {"shown": "mqar_shown.yaml", "hidden": "mqar_hidden.yaml", "zoology": "mqar_zoology.yaml"}


def train(out: Path, form: str, seed: int) -> Path:
    ckpt = out / f"{form}-s{seed}"
    if not (ckpt / "model.safetensors").exists():
        task = ROOT / "experiments/attn_mqar" / FORMS[form]
        cmd = [str(Path(sys.executable).with_name("evalkit")), "train", "--recipe", str(ROOT / "experiments/attn_mqar/recipe.yaml"),
               "--task", str(task), "--seed", str(seed), "--threads", "1", "--out", str(ckpt)]
        log = (out / f"{form}-s{seed}.log").open("w")
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/attn_mqar"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    runs = [(f, int(s)) for f in a.forms.split(",") for s in a.seeds.split(",")]
    with ThreadPoolExecutor(a.jobs) as pool:
        ckpts = list(pool.map(lambda r: train(a.out, *r), runs))

    import json

    import torch

    import evalkit
    from evalkit.results import query_accuracy

    torch.set_num_threads(1)
    rows = []
    for (form, seed), ckpt in zip(runs, ckpts):
        task = ROOT / "experiments/attn_mqar" / FORMS[form]
        df = evalkit.run(str(task), str(ckpt), output_dir=a.out / "store", device="cpu")
        q = query_accuracy(df).iloc[0]
        end = [json.loads(x) for x in (ckpt / "train_log.jsonl").read_text().splitlines()][-1]
        rows.append((form, seed, q, df["correct"].mean(), end["wall_s"]))
    print("| queries | seed | per-query acc | q1 | q2 | q3 | q4 | repeats an earlier answer | whole-sample | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for form, seed, q, whole, wall in rows:
        print(f"| {form} | {seed} | {q['mean']:.3f} | {q['q1']:.2f} | {q['q2']:.2f} | {q['q3']:.2f} | {q['q4']:.2f} "
              f"| {q['repeats']:.2f} | {whole:.3f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
