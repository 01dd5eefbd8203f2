"""Crash consistency of `evalkit run`: SIGKILL at random points never costs a finished cell, never
leaves a half-written one, and the next run resumes to exactly the uninterrupted run's results.

Two kinds of kill point, both on the real CLI code path (forked warm children of victim.py):

- *statement-indexed*: the child kills itself just before its N-th SQL statement, N stratified over
  every statement an uninterrupted run executes (store creation, run rows, every cell's
  transaction: BEGIN, DELETE, INSERT cell, INSERT record × samples, COMMIT, ...). This finds a
  missing transaction deterministically.
- *time-random*: the server kills the child after a random delay in [0, 1.1 × the run's duration]
  (model loading, scoring, the summary, anything); one in 20 with the cost probe on.

Trials: EVALKIT_KILL_TRIALS (default 40 per adapter kind, scaled by its ``share``; half of each kind).
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from reliability_util import (
    TINY_MODELS,
    ForkServer,
    env_int,
    log_text,
    store_rows,
    tiny_task,
)

from evalkit.store import Store

TRIALS = env_int("EVALKIT_KILL_TRIALS", 40)


def _argv(task: Path, models: list[Path], out: Path, cost: bool) -> list[str]:
    return ["run", str(task), "--models", ",".join(map(str, models)), "-d", str(out), "--device", "cpu",
            *([] if cost else ["--no-cost"])]


def _check_after_kill(out: Path, ref: dict) -> int:
    """The store a killed run left: opens, passes SQLite's integrity check, and every complete cell
    is exactly the uninterrupted run's cell with all of its records. Returns how many were complete."""
    f = out / "evalkit.sqlite"
    if not f.exists() or f.stat().st_size == 0:  # killed before the store was initialised: nothing to lose,
        return 0  # and readers say "no results store" (test_corrupt_artifacts); the resume below takes it over
    Store.open_dir(out).close()  # the next command can open it (WAL recovery included)
    c = sqlite3.connect(out / "evalkit.sqlite")
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        c.close()
    got = store_rows(out)
    assert not got["failed"], got["failed"]
    for key, cell in got["cells"].items():
        assert cell == ref["cells"][key], f"complete cell {key} differs from the uninterrupted run"
        assert got["records"].get(key) == ref["records"][key], f"cell {key}: records incomplete or wrong"
    orphans = set(got["records"]) - set(got["cells"])
    assert not orphans, f"records of cells that are not complete: {sorted(orphans)}"
    return len(got["cells"])


def _check_resumed(out: Path, ref: dict, cost: bool, n_models: int, n_lengths: int) -> None:
    assert store_rows(out) == ref
    c = sqlite3.connect(out / "evalkit.sqlite")
    try:
        statuses = [r[0] for r in c.execute("SELECT status FROM runs ORDER BY started_at")]
        assert statuses[-1] == "complete"
        # a killed run never claims to be still running once the next run has started
        assert "running" not in statuses, statuses
        if cost:
            ok = c.execute("SELECT count(*) FROM costs WHERE status='ok'").fetchone()[0]
            assert ok == n_models * n_lengths
    finally:
        c.close()


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_sigkill_at_random_points_never_loses_or_corrupts_a_cell(kind: str, tmp_path: Path) -> None:
    tiny = TINY_MODELS[kind]
    models, lengths, trials_total = tiny(tmp_path / "models"), tiny.lengths, max(4, round(TRIALS * tiny.share))
    task = tiny_task(tmp_path / "tasks", lengths=lengths, samples=6, depths=(0.0, 0.5, 1.0))
    n_cells = len(models) * len(lengths) * 3
    rng = random.Random(20260101)
    with ForkServer(tmp_path, _argv(task, models, tmp_path / "warm", cost=True)) as server:
        ref_dir = tmp_path / "ref"
        count = tmp_path / "statements"
        r = server.one(argv=_argv(task, models, ref_dir, cost=False), log=str(tmp_path / "ref.log"),
                       count_file=str(count))
        assert r["code"] == 0, log_text(tmp_path / "ref.log")
        ref = store_rows(ref_dir)
        assert len(ref["cells"]) == n_cells and all(len(v) == 6 for v in ref["records"].values())
        n_statements = int(count.read_text())
        duration = r["seconds"]
        # half at SQL statements (stratified over the run), the rest after random delays; the cost
        # probe makes a run ~10x longer, so only one trial in 20 runs with it
        n_stmt, n_cost = trials_total // 2, trials_total // 20
        duration_cost = 0.0
        if n_cost:
            r = server.one(argv=_argv(task, models, tmp_path / "ref-cost", cost=True), log=str(tmp_path / "rc.log"))
            assert r["code"] == 0 and store_rows(tmp_path / "ref-cost") == ref, log_text(tmp_path / "rc.log")
            duration_cost = r["seconds"]
        strata = [(i * n_statements // n_stmt, (i + 1) * n_statements // n_stmt) for i in range(n_stmt)]
        trials = [{"kill_at_stmt": rng.randint(lo + 1, max(lo + 1, hi)), "cost": False} for lo, hi in strata]
        trials += [{"kill_after": rng.uniform(0, 1.1 * duration), "cost": False}
                   for _ in range(trials_total - n_stmt - n_cost)]
        trials += [{"kill_after": rng.uniform(0, 1.1 * duration_cost), "cost": True} for _ in range(n_cost)]
        partial, completed_before_kill = [], 0
        for i, trial in enumerate(trials):
            out, log = tmp_path / f"t{i}", str(tmp_path / f"t{i}.log")
            cost = trial.pop("cost")
            res = server.one(argv=_argv(task, models, out, cost), log=log, **trial)
            if not res["killed"]:  # the run finished before its kill point
                assert res["code"] == 0, log_text(log)
                completed_before_kill += 1
            partial.append(_check_after_kill(out, ref))
            res = server.one(argv=_argv(task, models, out, cost), log=log + ".resume")
            assert res["code"] == 0, log_text(log + ".resume")
            _check_resumed(out, ref, cost, len(models), len(lengths))
    mid = sum(0 < k < n_cells for k in partial)
    print(f"\n[reliability] kill trials of `evalkit run` ({kind}): {len(trials)} ({n_stmt} at SQL statements "
          f"of {n_statements}, {len(trials) - n_stmt} after random delays, {n_cost} of them with the cost probe); "
          f"{mid} killed with some but not all of {n_cells} cells stored, {completed_before_kill} finished first")
    assert mid >= len(trials) // 4, "too few kills landed mid-sweep for the test to mean anything"
