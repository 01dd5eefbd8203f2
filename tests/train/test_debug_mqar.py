"""Issue 3's CPU check: the trainer takes a `debug`-flavor model to > 90 % on a short MQAR.

The recipe (experiments/debug/recipe.yaml) reaches the target in ~1100 steps, about 70 s of one
CPU core; the test runs it as the user would (`evalkit train --recipe ... --threads 1`, in its own
process so the thread setting stays there), then scores the saved checkpoint through
`evalkit.run`, the path every evaluation takes. The time is reported, not asserted: speed is for
benchmarks. Deterministic given the seed and the CPU's vector code path: the run escapes MQAR's plateau at
a step that floating-point differences move a lot, so the training process runs ATen's AVX2 kernels and
MKL's AVX2 code path on every x86-64 CPU (the recipe was tuned there: 0.91 at step 1,100). With ATen's
AVX-512 kernels (the default on an AVX-512 CPU) seed 0 plateaus at 0.84 in 1,500 steps (session 12, an
AMD EPYC); other seeds and settings showed the plateau's escape varies from ~700 steps to > 3,000.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

import evalkit

ROOT = Path(__file__).resolve().parents[2]


def test_debug_flavor_learns_short_mqar(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if platform.machine() in ("x86_64", "AMD64"):  # the same vector code path on every x86-64 CPU (docstring)
        env |= {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    cmd = [sys.executable, "-m", "evalkit.cli", "train", "--recipe", "experiments/debug/recipe.yaml",
           "--out", str(out), "--threads", "1"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    end = rows[-1]
    assert end["event"] == "end", end
    print(f"debug MQAR: {end['step']} steps, {end['wall_s']:.0f} s, held-out {end['acc']}")

    spec = yaml.safe_load((ROOT / "experiments/debug/model.yaml").read_text())
    spec["checkpoint"] = str(out)
    mpath = tmp_path / "debug_mqar.yaml"
    mpath.write_text(yaml.safe_dump(spec))
    df = evalkit.run(str(ROOT / "experiments/debug/mqar_short.yaml"), str(mpath), output_dir=tmp_path / "runs",
                     device="cpu")
    assert len(df) == 64
    assert df["correct"].mean() > 0.9
