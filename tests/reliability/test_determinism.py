"""Determinism on CPU: the same spec and seed give byte-identical samples (every built-in task) and
identical stored results (every cell key, every record) across runs in one process and across
fresh processes with different hash seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_util import TINY_MODELS, call_cli, store_rows, tiny_task

PROBE = Path(__file__).with_name("determinism_probe.py")


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_same_spec_and_seed_same_samples_and_results_across_runs_and_processes(kind: str, tmp_path: Path) -> None:
    from determinism_probe import sample_digests

    models = TINY_MODELS[kind](tmp_path / "models")
    task = tiny_task(tmp_path / "tasks", lengths=TINY_MODELS[kind].lengths[:2], samples=3)
    argv = ["run", str(task), "--models", ",".join(map(str, models)), "--device", "cpu", "--no-cost"]

    here = sample_digests(str(models[0]))
    assert len(here) >= 4  # every built-in task spec
    assert len(set(here.values())) == len(here)  # each planned and rendered something of its own
    for i in range(2):
        assert call_cli([*argv, "-d", str(tmp_path / f"in{i}")])[0] == 0
    procs = []
    for seed in (1, 2):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        procs.append(subprocess.Popen([sys.executable, str(PROBE), str(models[0]), *argv, "-d", str(tmp_path / f"p{seed}")],
                                      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert json.loads(out.splitlines()[0]) == here, "samples differ in a fresh process"

    ref = store_rows(tmp_path / "in0")
    assert ref["cells"] and not ref["failed"]
    for d in ("in1", "p1", "p2"):
        assert store_rows(tmp_path / d) == ref, f"results of {d} differ from the first run"
