"""RULER's offline needle variants through lm-eval and through ``evalkit run``: wall, CPU, scores.

Same local HF checkpoint (default: the retrieving tiny Llama in ``checkpoints/tiny-llama-niah``),
same variants, same context lengths, same number of samples per length, same CPU and thread
count; every (harness, variant) is one fresh command, timed from start to exit, so start-up,
data generation and model loading count for both:

- lm-eval: ``lm_eval --model hf --tasks VARIANT --metadata '{"max_seq_lengths": [...]}' --samples
  ...`` — its own RULER port: greedy generation up to 128 tokens (stopping at EOS),
  ``string_match_all``. ``--samples`` picks the first N documents of *each* length (``--limit N``
  would take the first length's only).
- evalkit: ``evalkit run VARIANT.yaml --models hf:PATH --lengths ... --samples N --no-cost`` on the
  preset ``tasks/ruler/VARIANT.yaml`` with ``length_rule: lm_eval`` (lm-eval's port leaves the answer
  prefix out of the length count; with it both harnesses build prompts of the same size), scored
  the default way: teacher-forced whole-answer exact match (one forward pass per sample). With
  ``--greedy`` evalkit's generation path (RULER's 128-token budget, substring match) runs too.

The offline variants are the ones whose haystack lm-eval can build without downloading Paul
Graham's essays: ``niah_single_1`` (noise), ``niah_multikey_2`` and ``niah_multikey_3``
(distractor needles). Both harnesses draw their own random samples (RULER's generator vs
evalkit's, seeded per cell), so scores agree *within sampling error*: the table gives each
side's 95 % Wilson interval and the two-proportion |z| (agreement: |z| < 1.96). With two or more
sample counts (``--samples 25,100``, the default) it also fits, per harness, CPU = fixed + per-sample
× N and sets the fixed part against the floor every transformers harness pays (Python, torch,
transformers, loading the model), which says where the time goes.

    python benchmarks/ruler_speed.py                                  # print the tables
    python benchmarks/ruler_speed.py --write benchmarks/results-ruler.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # benchmarks/ is not a package: imported from its directory
    CKPT,
    Timed,
    bench_env,
    bin_path,
    evalkit_counts,
    fit_fixed_and_per_sample,
    floor_command,
    lm_eval_command,
    lm_eval_scores,
    machine_line,
    md_table,
    median_timed,
    timed,
    two_proportion_z,
    wilson,
)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3")


def evalkit_spec(variant: str, work: Path) -> Path:
    """The preset with lm-eval's length count (same prompt sizes as lm-eval's port)."""
    d = yaml.safe_load((ROOT / "tasks" / "ruler" / f"{variant}.yaml").read_text())
    d["params"]["length_rule"] = "lm_eval"
    path = work / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def evalkit_command(spec: Path, ckpt: Path, lengths: list[int], n: int, store: Path, scoring: str) -> list[str]:
    return [bin_path("evalkit"), "run", str(spec), "--models", f"hf:{ckpt}", "--lengths", ",".join(map(str, lengths)),
            "--samples", str(n), "--output-dir", str(store), "--device", "cpu", "--no-cost", "--scoring", scoring]


def _score(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]"


Timings = dict[tuple[int, str, str], Timed]  # (samples per length, variant, harness) → median timing


def measure(args: argparse.Namespace, variants: list[str], lengths: list[int], ns: list[int], modes: list[str],
            work: Path) -> tuple[Timings, dict, dict, Timed]:
    """Run every (sample count, variant, harness) ``args.repeats`` times, and the shared floor."""
    env = bench_env(args.threads)
    times: Timings = {}
    lm_scores: dict[tuple[int, str], dict[int, float]] = {}
    ek_scores: dict[tuple[int, str, str], dict[int, tuple[int, int]]] = {}
    floor = median_timed([timed(floor_command(args.checkpoint), env) for _ in range(args.repeats)])
    print(f"floor: {floor.wall:.1f} s wall / {floor.cpu:.1f} s CPU", flush=True)
    for n in ns:
        for v in variants:
            spec = evalkit_spec(v, work)
            runs: dict[str, list[Timed]] = {}
            for r in range(args.repeats):
                out = work / f"lm_{n}_{v}_{r}"
                runs.setdefault("lm-eval", []).append(timed(lm_eval_command(
                    args.checkpoint, v, lengths, n, args.batch_size, out), env))
                lm_scores[(n, v)] = lm_eval_scores(out, v, lengths)
                for mode in modes:
                    store = work / f"ek_{n}_{v}_{mode}_{r}"
                    runs.setdefault(mode, []).append(timed(evalkit_command(
                        spec, args.checkpoint, lengths, n, store, mode), env))
                    ek_scores[(n, v, mode)] = evalkit_counts(store)[v]
            for harness, rs in runs.items():
                times[(n, v, harness)] = median_timed(rs)
            print(f"n={n} {v}: " + ", ".join(f"{h} {t.wall:.1f} s wall / {t.cpu:.1f} s CPU"
                                             for (nn, vv, h), t in times.items() if (nn, vv) == (n, v)), flush=True)
    return times, lm_scores, ek_scores, floor


def speed_table(times: Timings, n: int, variants: list[str], modes: list[str]) -> str:
    rows = []
    for v in [*variants, None]:  # None: every variant's commands summed
        base = [times[(n, x, "lm-eval")] for x in (variants if v is None else [v])]
        lw, lc = sum(t.wall for t in base), sum(t.cpu for t in base)
        for mode in modes:
            ts = [times[(n, x, mode)] for x in (variants if v is None else [v])]
            ew, ec = sum(t.wall for t in ts), sum(t.cpu for t in ts)
            rows.append([v or "**all**", f"evalkit {mode}", f"{lw:.1f}", f"{ew:.1f}", f"{lw / ew:.1f}×",
                         f"{lc:.1f}", f"{ec:.1f}", f"**{lc / ec:.1f}×**"])
    return md_table(["variant", "evalkit side", "lm-eval wall (s)", "evalkit wall (s)", "speed-up (wall)",
                     "lm-eval CPU (s)", "evalkit CPU (s)", "speed-up (CPU)"], rows)


def score_table(lm_scores: dict, ek_scores: dict, n: int, variants: list[str], lengths: list[int],
                modes: list[str]) -> str:
    head = ["variant", "L", "lm-eval (95% Wilson)"]
    for mode in modes:
        head += [f"evalkit {mode} (95% Wilson)", "\\|z\\|"]
    rows = []
    for v in variants:
        for L in lengths:
            k_lm = round(lm_scores[(n, v)][L] * n)
            row = [v, str(L), _score(k_lm, n)]
            for mode in modes:
                k, m = ek_scores[(n, v, mode)][L]
                row += [_score(k, m), f"{two_proportion_z(k, m, k_lm, n):.2f}"]
            rows.append(row)
    return md_table(head, rows)


def cost_model_table(times: Timings, floor: Timed, ns: list[int], variants: list[str], modes: list[str]) -> str:
    """CPU seconds per variant command = fixed + per sample × n (n samples per length), fitted."""
    rows = []
    for harness in ["lm-eval", *modes]:
        per_n = [sum(times[(n, v, harness)].cpu for v in variants) / len(variants) for n in ns]
        fixed, per_sample = fit_fixed_and_per_sample(ns, per_n)
        rows.append([harness if harness == "lm-eval" else f"evalkit {harness}", f"{fixed:.1f}",
                     f"{fixed - floor.cpu:.1f}", f"{1000 * per_sample:.0f}"])
    return md_table(["harness", "fixed CPU per command (s)", "fixed minus the floor (s)",
                     "CPU per added sample at each length (ms)"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=CKPT)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--samples", default="25,100", help="samples per length, both harnesses (comma list: one "
                    "table per count, and with two or more a fixed + per-sample cost fit)")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="lm-eval's --batch_size (1, its default, is its fastest on CPU: no padding mask)")
    ap.add_argument("--threads", type=int, default=1, help="math threads per harness (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every command (median wall and CPU)")
    ap.add_argument("--greedy", action="store_true", help="also run evalkit --scoring greedy")
    ap.add_argument("--write", type=Path, help="also write the tables (markdown) to this file")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    lengths = [int(x) for x in args.lengths.split(",")]
    ns = [int(x) for x in args.samples.split(",")]
    modes = ["teacher_forced"] + (["greedy"] if args.greedy else [])
    work = Path(tempfile.mkdtemp(prefix="ruler_speed_"))
    load0 = os.getloadavg()[0]
    try:
        times, lm_scores, ek_scores, floor = measure(args, variants, lengths, ns, modes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    parts = [f"checkpoint {args.checkpoint.name}, variants {', '.join(variants)}, lengths {lengths}, "
             f"repeats {args.repeats} (median), " + machine_line(load0, args.threads),
             (f"Floor (start Python, import torch + transformers, load this model and tokenizer; both harnesses "
              f"pay it once per command): {floor.wall:.1f} s wall, {floor.cpu:.1f} s CPU.")]
    for n in ns:
        parts += [f"### {n} samples per length", speed_table(times, n, variants, modes),
                  score_table(lm_scores, ek_scores, n, variants, lengths, modes)]
    if len(ns) > 1:
        parts += ["### Where the CPU time goes (fit over the sample counts, mean over variants)",
                  cost_model_table(times, floor, ns, variants, modes)]
    text = "\n\n".join(parts)
    print(text)
    if args.write:
        cmd = "python benchmarks/ruler_speed.py " + " ".join(sys.argv[1:])
        args.write.write_text(f"# RULER's offline NIAH variants: lm-eval vs evalkit\n\n`{cmd}`\n\n{text}\n")


if __name__ == "__main__":
    main()
