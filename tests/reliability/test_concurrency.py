"""Two `evalkit run` processes on one output directory at once: the store is never corrupted and no
cell is computed twice; the second writer is refused with one clear sentence (exit 2) while the
first holds the directory's writer lock, or, if it comes after, reuses every cell."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from reliability_util import (
    TINY_MODELS,
    ForkServer,
    env_int,
    error_sentence,
    store_rows,
    tiny_task,
)

ROUNDS = env_int("EVALKIT_CONCURRENCY_ROUNDS", 4)
REFUSAL = "another evalkit run is writing to"


def _argv(task: Path, models: list[Path], out: Path) -> list[str]:
    return ["run", str(task), "--models", ",".join(map(str, models)), "-d", str(out), "--device", "cpu", "--no-cost"]


def _outcome(code: int | None, out: str, err: str, n_cells: int) -> int:
    """Cells this process computed; asserts it either ran (exit 0) or was refused (exit 2)."""
    if code == 2:
        assert REFUSAL in error_sentence(err), out + err
        return 0
    assert code == 0, out + err
    m = re.search(r"(\d+) cells run, (\d+) reused", out)
    assert m and int(m[1]) + int(m[2]) == n_cells, out + err
    return int(m[1])


def _read(path: str) -> str:
    return Path(path).read_text() if Path(path).exists() else ""


def test_two_runs_at_once_never_duplicate_or_corrupt(tmp_path: Path) -> None:
    """Native models only: the lock is taken before any adapter code runs, so the adapter does
    not change what this tests (the crash and determinism tests run over every adapter)."""
    kind = "native"
    tiny = TINY_MODELS[kind]
    models, rounds = tiny(tmp_path / "models"), max(2, round(ROUNDS * tiny.share))
    task = tiny_task(tmp_path / "tasks", lengths=tiny.lengths, samples=6, depths=(0.0, 0.5, 1.0))
    n_cells = len(models) * 3 * 3
    refused = 0
    with ForkServer(tmp_path, _argv(task, models, tmp_path / "warm")) as server:
        assert server.one(argv=_argv(task, models, tmp_path / "ref"), log=str(tmp_path / "ref.log"))["code"] == 0
        ref = store_rows(tmp_path / "ref")
        for i in range(rounds):
            out = tmp_path / f"r{i}"
            logs = [str(tmp_path / f"r{i}.{j}.log") for j in range(2)]
            results = server.run([{"argv": _argv(task, models, out), "log": log} for log in logs])
            ran = [_outcome(r["code"], _read(log), _read(log + ".err"), n_cells) for r, log in zip(results, logs)]
            assert sum(ran) == n_cells, f"round {i}: cells computed {ran}, expected {n_cells} in total"
            refused += sum(r["code"] == 2 for r in results)
            assert store_rows(out) == ref
    print(f"\n[reliability] concurrent `evalkit run` pairs ({kind}): {rounds} rounds, {refused} refused by the lock")
    assert refused >= 1, "the two runs never overlapped, so the lock was never exercised"


def test_two_cli_processes_started_together(tmp_path: Path) -> None:
    """The same through two real `evalkit` processes (cold start; which one wins varies)."""
    models = TINY_MODELS["native"](tmp_path / "models")
    task = tiny_task(tmp_path / "tasks", lengths=(64, 128), samples=4)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "evalkit.cli", *_argv(task, models, out)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    texts = [p.communicate(timeout=300) for p in procs]
    ran = [_outcome(p.returncode, out, err, 8) for p, (out, err) in zip(procs, texts)]
    assert sum(ran) == 8
    got = store_rows(out)
    assert len(got["cells"]) == 8 and all(len(v) == 4 for v in got["records"].values())
