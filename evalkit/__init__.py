"""evalkit: long-context recall versus cost, for transformers, SSMs and hybrids.

Python API (notebooks are a first-class workflow)::

    import evalkit
    df = evalkit.run("needle", models=["hybrid", "mamba"], lengths=[256, 1024])  # per-sample records
    df = evalkit.load("runs")                                                    # a whole store

Heavy dependencies (torch, pandas) load on first use, so ``import evalkit`` is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pandas as pd


def run(
    tasks: str | Sequence[str],
    models: str | Sequence[str],
    lengths: Sequence[int] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    output_dir: str | Path = "runs",
    device: str = "auto",
    overwrite: bool = False,
    limit: int | None = None,
    scoring: str = "teacher_forced",
    train_missing: bool = False,
    checkpoint_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Evaluate task specs (paths or built-in names) on models; return per-sample records of
    every cell of this sweep (reused from the store or freshly run). A model spec may sweep its
    architecture; with ``train_missing`` its variants without a cached checkpoint are trained
    first (a ``train:`` block, docs/training.md; progress lines on stderr)."""
    import sys

    from evalkit.results import records_frame
    from evalkit.runner import execute, plan
    from evalkit.spec import load_model_specs, load_task_spec
    from evalkit.store import Store

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    models = [models] if isinstance(models, str) else list(models)
    task_specs = [load_task_spec(t) for t in tasks]
    model_specs = [v for m in models for v in load_model_specs(m)]
    if any(m.trains for m in model_specs):  # check the whole evaluation before training anything
        from evalkit.sweeps import prepare_models

        plan(task_specs, model_specs, lengths=lengths, samples=samples, seed=seed, scoring=scoring)
        model_specs = prepare_models(model_specs, output_dir, train_missing=train_missing,
                                     checkpoint_dir=checkpoint_dir, device=device, command="evalkit.run()",
                                     log=lambda line: print(line, file=sys.stderr)).models
    cells = plan(task_specs, model_specs, lengths=lengths, samples=samples, seed=seed, scoring=scoring)
    execute(cells, output_dir, device=device, overwrite=overwrite, limit=limit, command="evalkit.run()")
    store = Store.open_dir(output_dir)
    try:
        return records_frame(store, [c.cell_key for c in cells])
    finally:
        store.close()


def load(output_dir: str | Path = "runs") -> pd.DataFrame:
    """Read a results store into pandas: one row per scored sample, sweep axes as columns."""
    from evalkit.results import load as _load

    return _load(output_dir)


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'evalkit' has no attribute '{name}'")


__all__ = ["__version__", "load", "run"]
