"""The same needle workload through lm-eval's RULER ``niah_single_1`` and through ``evalkit run``.

Same local HF checkpoint, same context lengths, same number of samples per length, same CPU and
thread count (``_harness.py`` says why one thread by default); each harness runs as the command a
user would type (a fresh process, timed from start to exit, so start-up and data generation
count for both):

- lm-eval: ``lm_eval --model hf --tasks niah_single_1 --metadata '{"max_seq_lengths": [...]}'
  --samples ...`` (the first N documents of each length) — RULER's noise haystack, one 7-digit
  needle under an adjective-noun key, greedy generation (up to 128 tokens, stopping at EOS),
  ``string_match_all``.
- evalkit: ``evalkit run SPEC --models hf:PATH`` with the ``needle`` task in the ``text`` format on
  the same noise haystack (RULER's sentences), one 7-digit needle, depths 0…1 pooled —
  teacher-forced (one forward pass per batch, the default) and, for comparison, ``--scoring greedy``
  (generation with RULER-style substring scoring).

Not identical, and printed with the numbers: lm-eval draws needle depths uniformly and keys from
wonderwords; evalkit uses five fixed depths and its own key words. lm-eval's ``L`` is RULER's
budget (prompt + 128 generated tokens <= L); evalkit's ``L`` is the whole sequence (prompt +
answer = L), so evalkit's prompts are ~128 tokens longer at the same L (more work, not less).
``ruler_speed.py`` runs evalkit's RULER presets instead (same prompts as lm-eval's port).

    python benchmarks/lmeval_speed.py                       # print the table
    python benchmarks/lmeval_speed.py --write benchmarks/results-lmeval.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # benchmarks/ is not a package: imported from its directory
    CKPT,
    Timed,
    bench_env,
    bin_path,
    evalkit_counts,
    floor_command,
    lm_eval_command,
    lm_eval_scores,
    machine_line,
    md_table,
    median_timed,
    timed,
)

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
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


def evalkit_command(ckpt: Path, lengths: list[int], n: int, scoring: str, work: Path) -> tuple[list[str], Path]:
    spec = work / "needle_noise.yaml"
    spec.write_text(SPEC.format(lengths=", ".join(map(str, lengths)), per_depth=n // len(DEPTHS),
                                depths=", ".join(map(str, DEPTHS))))
    store = work / f"evalkit_{scoring}"
    shutil.rmtree(store, ignore_errors=True)  # a repeat recomputes, it does not reuse the store
    return [bin_path("evalkit"), "run", str(spec), "--models", f"hf:{ckpt}", "--output-dir", str(store),
            "--device", "cpu", "--no-cost", "--scoring", scoring], store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=CKPT)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--samples", type=int, default=25, help="samples per length (a multiple of 5)")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="lm-eval's --batch_size (1, its default, is its fastest on CPU: no padding mask)")
    ap.add_argument("--threads", type=int, default=1, help="math threads per harness (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every command (median wall and CPU)")
    ap.add_argument("--write", type=Path, help="also write the table (markdown) to this file")
    args = ap.parse_args()
    if args.samples % len(DEPTHS):
        sys.exit(f"--samples must be a multiple of {len(DEPTHS)} (evalkit pools {len(DEPTHS)} depths)")
    lengths = [int(x) for x in args.lengths.split(",")]
    env = bench_env(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lmeval_speed_"))
    load0 = os.getloadavg()[0]
    names = {"teacher_forced": "evalkit run, teacher-forced exact match",
             "greedy": "evalkit run --scoring greedy (generate, substring match)"}
    runs: dict[str, list[Timed]] = {}
    scores: dict[str, dict[int, float]] = {}
    try:
        for r in range(args.repeats):
            runs.setdefault("floor", []).append(timed(floor_command(args.checkpoint), env))
            out = work / f"lm_eval_out_{r}"
            runs.setdefault("lm-eval", []).append(timed(lm_eval_command(
                args.checkpoint, "niah_single_1", lengths, args.samples, args.batch_size, out), env))
            scores["lm-eval"] = lm_eval_scores(out, "niah_single_1", lengths)
            for scoring in names:
                cmd, store = evalkit_command(args.checkpoint, lengths, args.samples, scoring, work)
                runs.setdefault(scoring, []).append(timed(cmd, env))
                counts = evalkit_counts(store)["needle_noise"]
                scores[scoring] = {L: k / n for L, (k, n) in counts.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = {name: median_timed(rs) for name, rs in runs.items()}
    base = t["lm-eval"]
    rows = [[f"lm-eval niah_single_1 (hf, batch {args.batch_size}, generate ≤128, string_match_all)",
             f"{base.wall:.1f}", "1.0×", f"{base.cpu:.1f}", "1.0×",
             *(f"{scores['lm-eval'][L]:.2f}" for L in lengths)]]
    for scoring, name in names.items():
        rows.append([name, f"{t[scoring].wall:.1f}", f"{base.wall / t[scoring].wall:.1f}×", f"{t[scoring].cpu:.1f}",
                     f"**{base.cpu / t[scoring].cpu:.1f}×**", *(f"{scores[scoring][L]:.2f}" for L in lengths)])
    rows.append(["floor: start Python, import torch + transformers, load model + tokenizer (both pay it)",
                 f"{t['floor'].wall:.1f}", "", f"{t['floor'].cpu:.1f}", "", *([""] * len(lengths))])
    table = md_table(["harness", "wall (s)", "speed-up (wall)", "CPU (s)", "speed-up (CPU)",
                      *(f"score L={n}" for n in lengths)], rows)
    info = (f"checkpoint {args.checkpoint.name}, lengths {lengths}, {args.samples} samples per length, "
            f"repeats {args.repeats} (median), " + machine_line(load0, args.threads))
    print(info, table, sep="\n")
    if args.write:
        cmd = "python benchmarks/lmeval_speed.py " + " ".join(sys.argv[1:])
        args.write.write_text(f"# lm-eval vs evalkit: the same needle workload\n\n`{cmd}`\n\n{info}\n\n{table}\n")


if __name__ == "__main__":
    main()
