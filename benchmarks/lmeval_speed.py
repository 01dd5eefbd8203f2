"""The same needle workload through lm-eval's RULER ``niah_single_1`` and through ``evalkit run``.

Same local HF checkpoint, same context lengths, same number of samples per length, same CPU;
each harness runs as the command a user would type (a fresh process, wall clock from start to
exit, so start-up and data generation count for both):

- lm-eval: ``lm_eval --model hf --tasks niah_single_1 --metadata '{"max_seq_lengths": [...]}'
  --samples`` (the first N documents of each length) — RULER's noise haystack, one 7-digit needle under an adjective-noun key, greedy
  generation (up to 128 tokens, stopping at EOS), ``string_match_all``.
- evalkit: ``evalkit run SPEC --models hf:PATH`` with the ``needle`` task in the ``text`` format on
  the same noise haystack (RULER's sentences), one 7-digit needle, depths 0…1 pooled —
  teacher-forced (one forward pass per batch, the default) and, for comparison, ``--scoring greedy``
  (generation with RULER-style substring scoring).

Not identical, and printed with the numbers: lm-eval draws needle depths uniformly and keys from
wonderwords; evalkit uses five fixed depths and its own key words. lm-eval's ``L`` is RULER's
budget (prompt + 128 generated tokens <= L); evalkit's ``L`` is the whole sequence (prompt +
answer = L), so evalkit's prompts are ~128 tokens longer at the same L (more work, not less).

    python benchmarks/lmeval_speed.py                       # print the table
    python benchmarks/lmeval_speed.py --write benchmarks/results-lmeval.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CKPT = HERE / "checkpoints" / "tiny-llama-niah"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
RULER_SAMPLES = 500  # documents lm-eval's RULER generates per length (niah_utils.py)
SPEC = """\
# the lmeval_speed benchmark's needle workload: RULER's noise haystack, one 7-digit needle
task: needle
name: needle_noise
filler: repeat
lengths: [{lengths}]
samples: {per_depth}
seed: 0
text: {{haystack: noise, values: numbers}}
params:
  depth: [{depths}]
  key_len: 2
  value_len: 1
"""


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


CPU_S: dict[str, float] = {}  # command → CPU seconds (user + system) of its process tree


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of a command; its CPU seconds go to CPU_S (the machine may be shared, and CPU
    time is far less sensitive to other processes than wall time)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S[" ".join(cmd)] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall, out.stdout


def run_lm_eval(ckpt: Path, lengths: list[int], n: int, batch: int, work: Path, env: dict[str, str]) -> tuple[float, dict]:
    out_dir = work / "lm_eval_out"
    cmd = [_bin("lm_eval"), "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=float32",
           "--tasks", "niah_single_1", "--metadata", json.dumps({"max_seq_lengths": lengths}),
           # the first n of each length's RULER_SAMPLES documents (--limit would take the first length's only)
           "--samples", json.dumps({"niah_single_1": [i * RULER_SAMPLES + j for i in range(len(lengths))
                                                      for j in range(n)]}),
           "--device", "cpu", "--batch_size", str(batch), "--output_path", str(out_dir)]
    wall, _ = _timed(cmd, env)
    [res] = list(out_dir.rglob("results_*.json"))
    scores = json.loads(res.read_text())["results"]["niah_single_1"]
    return wall, {n_: float(scores[f"{n_},none"]) for n_ in lengths}


def run_evalkit(ckpt: Path, lengths: list[int], n: int, scoring: str, work: Path, env: dict[str, str]) -> tuple[float, dict]:
    spec = work / "needle_noise.yaml"
    spec.write_text(SPEC.format(lengths=", ".join(map(str, lengths)), per_depth=n // len(DEPTHS),
                                depths=", ".join(map(str, DEPTHS))))
    store = work / f"evalkit_{scoring}"
    cmd = [_bin("evalkit"), "run", str(spec), "--models", f"hf:{ckpt}", "--output-dir", str(store),
           "--device", "cpu", "--no-cost", "--scoring", scoring]
    wall, _ = _timed(cmd, env)
    import pandas as pd  # noqa: F401  (evalkit.load returns a frame)

    import evalkit

    df = evalkit.load(store)
    return wall, {int(k): float(v) for k, v in df.groupby("context_length")["correct"].mean().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=CKPT)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--samples", type=int, default=25, help="samples per length (a multiple of 5)")
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval's --batch_size")
    ap.add_argument("--write", type=Path, help="also write the table (markdown) to this file")
    args = ap.parse_args()
    if args.samples % len(DEPTHS):
        sys.exit(f"--samples must be a multiple of {len(DEPTHS)} (evalkit pools {len(DEPTHS)} depths)")
    lengths = [int(x) for x in args.lengths.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="lmeval_speed_"))
    load0 = os.getloadavg()[0]
    try:
        rows = [("lm-eval niah_single_1 (hf, generate ≤128, string_match_all)",
                 *run_lm_eval(args.checkpoint, lengths, args.samples, args.batch_size, work, env))]
        rows.append(("evalkit run, teacher-forced exact match",
                     *run_evalkit(args.checkpoint, lengths, args.samples, "teacher_forced", work, env)))
        rows.append(("evalkit run --scoring greedy (generate, substring match)",
                     *run_evalkit(args.checkpoint, lengths, args.samples, "greedy", work, env)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpus = list(CPU_S.values())
    base, base_cpu = rows[0][1], cpus[0]
    head = ("| harness | wall (s) | speed-up (wall) | CPU (s) | speed-up (CPU) | "
            + " | ".join(f"score L={n}" for n in lengths) + " |")
    lines = [head, "|" + "---|" * (5 + len(lengths))]
    for (name, wall, scores), cpu in zip(rows, cpus):
        lines.append(f"| {name} | {wall:.1f} | {base / wall:.1f}× | {cpu:.1f} | {base_cpu / cpu:.1f}× | "
                     + " | ".join(f"{scores.get(n, float('nan')):.2f}" for n in lengths) + " |")
    table = "\n".join(lines)
    info = (f"checkpoint {args.checkpoint.name}, lengths {lengths}, {args.samples} samples per length, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, python {platform.python_version()}, "
            f"load average before {load0:.1f}, after {os.getloadavg()[0]:.1f}")
    print(info)
    print(table)
    if args.write:
        cmd = "python benchmarks/lmeval_speed.py " + " ".join(sys.argv[1:])
        args.write.write_text(f"# lm-eval vs evalkit: the same needle workload\n\n`{cmd}`\n\n{info}\n\n{table}\n")


if __name__ == "__main__":
    main()
