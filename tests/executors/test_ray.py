"""The ``ray`` executor on a real local Ray cluster (2 CPUs, two CPU workers): the same stored
results as ``local``; a worker SIGKILLed mid-run is replaced and nothing is lost or duplicated; a
worker that keeps dying gets its remaining cells recorded as failed while the sweep finishes.

One cluster for the whole module (starting Ray is the slow part), bound to the loopback address.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'evalkit[ray]')")

import slow_plugin  # noqa: F401  (registers kind: slow_native, found by the workers as a plugin)

from evalkit import runner
from evalkit.executors import make_executor
from evalkit.spec import load_model_spec, load_task_spec

VOLATILE = {"run_id", "finished_at", "wall_s", "tokens_per_s"}  # differ between any two runs


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Any:
    # Ray's memory monitor kills workers when the machine is nearly full; on a shared CI machine
    # that would be a second, random killer beside the one these tests control
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    yield
    ray.shutdown()


def _sweep(tmp_path: Path, kind: str) -> list[Any]:
    """Two ``kind`` models × 6 cells each (lengths × depths), 6 samples per cell."""
    models = []
    for name, arch in {"r-attn": "{flavor: debug, attention_fraction: 1.0}",
                       "r-mamba2": "{flavor: debug, ssm: mamba2}"}.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(f"name: {name}\nkind: {kind}\narch: {arch}\ninit_seed: 2\n")
        models.append(load_model_spec(str(p)))
    task = tmp_path / "needle.yaml"
    task.write_text("task: needle\nlengths: [64, 96, 128]\nsamples: 6\nseed: 5\nparams:\n  depth: [0.0, 1.0]\n")
    return runner.plan([load_task_spec(task)], models)


@pytest.fixture
def sweep(tmp_path: Path) -> list[Any]:
    return _sweep(tmp_path, "native")


@pytest.fixture
def slow_sweep(tmp_path: Path) -> list[Any]:
    """The same sweep through the slowed-down plugin adapter (≥ 0.9 s per model)."""
    return _sweep(tmp_path, "slow_native")


def _stored(out: Path) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    c = sqlite3.connect(out / "evalkit.sqlite")
    c.row_factory = sqlite3.Row
    cells = [{k: r[k] for k in r.keys() if k not in VOLATILE}  # noqa: SIM118  (sqlite3.Row)
             for r in c.execute("SELECT * FROM cells ORDER BY cell_key")]
    records = [tuple(r) for r in c.execute("SELECT * FROM records ORDER BY cell_key, idx")]
    c.close()
    return cells, records


def test_ray_and_local_store_identical_results(cli: Any, sweep: list[Any], tmp_path: Path) -> None:
    local = runner.execute(sweep, tmp_path / "local", device="cpu", cost=False)
    assert not local.failed and len(local.ran) == len(sweep) == 12
    models = ",".join(str(Path(m.path)) for m in {c.model.path: c.model for c in sweep}.values())
    code, out, err = cli("run", sweep[0].spec.path, "--models", models, "--device", "cpu", "--executor", "ray",
                         "--workers", "2", "-d", str(tmp_path / "ray"))
    assert code == 0 and "12 cells run, 0 reused" in out, err
    assert _stored(tmp_path / "ray") == _stored(tmp_path / "local")
    c = sqlite3.connect(tmp_path / "ray" / "evalkit.sqlite")
    assert c.execute("SELECT device_name FROM runs").fetchone()[0] == "ray (local cluster)"
    # the workers' cost probes came back and were written once per (model, length)
    costs = c.execute("SELECT model, context_length, status FROM costs ORDER BY model, context_length").fetchall()
    assert costs == [(m, L, "ok") for m in ("r-attn", "r-mamba2") for L in (64, 96, 128)]
    # resume: nothing left to do, so no worker is started
    again_ex = make_executor("ray", workers=2)
    again = runner.execute(sweep, tmp_path / "ray", device="cpu", executor=again_ex, cost=False)
    assert again.ran == [] and len(again.reused) == 12 and again_ex.worker_pids == {}


def test_worker_killed_mid_run_is_replaced_nothing_lost_or_duplicated(slow_sweep: list[Any], tmp_path: Path) -> None:
    sweep = slow_sweep
    runner.execute(sweep, tmp_path / "local", device="cpu", cost=False)
    ex = make_executor("ray", workers=2, max_retries=2)
    victim = sweep[0].model_id + sweep[0].model.name
    killed: list[int] = []
    arrived: list[str] = []

    def on_cell(cell: Any, status: str) -> None:
        arrived.append(cell.cell_key)
        if cell.model_id + cell.model.name == victim and not killed:  # SIGKILL after its first cell
            killed.append(ex.worker_pids[victim])
            os.kill(killed[0], signal.SIGKILL)

    result = runner.execute(sweep, tmp_path / "ray", device="cpu", executor=ex, on_cell=on_cell, cost=False)
    assert killed and ex.stats.restarts == {victim: 1} and not ex.stats.abandoned
    assert not result.failed and sorted(result.ran) == sorted(c.cell_key for c in sweep)
    assert len(arrived) == len(set(arrived)) == 12  # each cell written exactly once
    assert ex.worker_pids[victim] != killed[0]  # the rest ran on a fresh worker
    assert _stored(tmp_path / "ray") == _stored(tmp_path / "local")


def test_a_worker_that_keeps_dying_fails_its_cells_and_the_sweep_finishes(slow_sweep: list[Any],
                                                                         tmp_path: Path) -> None:
    sweep = slow_sweep
    ex = make_executor("ray", workers=2, max_retries=1)
    victim = sweep[0].model_id + sweep[0].model.name
    kills: list[int] = []

    def on_cell(cell: Any, status: str) -> None:  # kill every worker of the victim after one cell
        if cell.model_id + cell.model.name == victim and status == "complete":
            pid = ex.worker_pids[victim]
            if pid not in kills:
                kills.append(pid)
                os.kill(pid, signal.SIGKILL)

    result = runner.execute(sweep, tmp_path / "ray", device="cpu", executor=ex, on_cell=on_cell, cost=False)
    assert len(kills) == 2 and ex.stats.restarts == {victim: 2} and victim in ex.stats.abandoned
    mine = [c for c in sweep if c.model_id + c.model.name == victim]
    others = [c for c in sweep if c not in mine]
    assert all(c.cell_key in result.ran for c in others)  # the other model finished
    assert result.failed and all("worker died 2 times" in why for why in result.failed.values())
    c = sqlite3.connect(tmp_path / "ray" / "evalkit.sqlite")
    rows = dict(c.execute("SELECT cell_key, status FROM cells").fetchall())
    assert sorted(rows) == sorted(x.cell_key for x in sweep)  # every cell stored once, none lost
    failed = sorted(k for k, s in rows.items() if s == "failed")
    assert 1 <= len(failed) == len(result.failed) <= len(mine) - 2  # two workers each delivered ≥ 1 cell
    assert set(failed) <= {x.cell_key for x in mine}
    # a re-run with healthy workers completes exactly what failed
    again = runner.execute(sweep, tmp_path / "ray", device="cpu", executor=make_executor("ray", workers=2), cost=False)
    assert not again.failed and sorted(again.ran) == failed


def test_bad_executor_input_is_one_clear_error(cli: Any, sweep: list[Any], tmp_path: Path) -> None:
    from evalkit.errors import EvalkitError

    code, _, err = cli("run", sweep[0].spec.path, "--models", sweep[0].model.path, "--workers", "2",
                       "-d", str(tmp_path / "o"))
    assert code == 2 and "--workers only apply with --executor ray" in err and not (tmp_path / "o").exists()

    with pytest.raises(EvalkitError, match="--workers must be at least 1"):
        make_executor("ray", workers=0)
    with pytest.raises(EvalkitError, match="needs --gpus-per-worker"):
        make_executor("ray").describe("cuda")
    with pytest.raises(EvalkitError, match="unknown executor 'rey'; did you mean 'ray'"):
        make_executor("rey")
