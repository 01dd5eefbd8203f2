"""Fixed training sets ("pools") for the trainer: N samples per (task spec, length), built once.

By default the trainer draws fresh samples every step (``train_batch``), which costs a few
milliseconds of Python per sample: fine on a CPU, where the model step costs more, but on a GPU a
tiny model's step is ~5 ms and the data would be 20× the work. With ``pool: N`` in the recipe the
trainer instead samples batches from a fixed set of N samples per (spec, length), the way
Zoology trains MQAR on a fixed training set (its default is 100,000 examples per setting).

A pool is built from the trainer's own "train" seed namespace (sample i of a pool is sample i of
the pseudo-step ``pool``), so it never overlaps the held-out set either. Building is parallel
over ``workers`` processes and can be cached on disk (``cache_dir``) under a hash of everything
that decides its content; runs that share a task spec and seed share the file, and a file is
written atomically (temp + rename), so concurrent runs never read a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.models.base import stable_hash
from evalkit.spec import TaskSpec

POOL_VERSION = 1  # bump when the pool's content for the same key changes
CHUNK = 256  # samples per worker task


def pool_key(spec: TaskSpec, seed: int, length: int, n: int) -> str:
    """Identity of a pool: the generator, the task and its sweep points, filler (and the tokens
    format's query options off their defaults), seed, length, size."""
    from evalkit.runner import GENERATOR_VERSION
    from evalkit.tasks import TASKS

    return stable_hash({
        "pool": POOL_VERSION, "generator": GENERATOR_VERSION, "task": spec.task,
        "task_version": TASKS.get(spec.task).version, "points": spec.points(), "filler": spec.filler,
        "spec_seed": spec.seed, "seed": seed, "length": length, "n": n,
        **spec.token_options(),
    })[:24]


def _chunk(args: tuple[TaskSpec, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Samples [start, start + count) of a pool as (ids, targets) int16 arrays."""
    from evalkit.train import _targets, train_batch

    spec, seed, length, start, count = args
    batch = train_batch(spec, seed, f"pool:{start}", length, count)
    ids, tgt = _targets(batch)
    return ids.numpy().astype(np.int16), tgt.numpy().astype(np.int16)


def build_pool(spec: TaskSpec, seed: int, length: int, n: int, workers: int = 1,
               cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training samples of ``spec`` at ``length``: input ids and answer targets (n, length),
    int16 (-100 where nothing is scored). Read from ``cache_dir`` when a pool with the same key is
    there; otherwise built with ``workers`` processes and written there."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{spec.task}-{length}-{n}-{pool_key(spec, seed, length, n)}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["ids"], z["tgt"]
    jobs = [(spec, seed, length, s, min(CHUNK, n - s)) for s in range(0, n, CHUNK)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as ex:
            parts = list(ex.map(_chunk, jobs))
    else:
        parts = [_chunk(j) for j in jobs]
    ids = np.concatenate([p[0] for p in parts])
    tgt = np.concatenate([p[1] for p in parts])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=ids, tgt=tgt)
        os.replace(tmp, path)
    return ids, tgt


class Pools:
    """The pools of one training run, on the training device, built lazily per (spec, length)."""

    def __init__(self, n: int, seed: int, device: str, workers: int = 1,
                 cache_dir: str | Path | None = None) -> None:
        self.n, self.seed, self.device, self.workers, self.cache_dir = n, seed, device, workers, cache_dir
        self._pools: dict[tuple[str, int], tuple[Any, Any]] = {}

    def prepare(self, specs: Sequence[TaskSpec], fit: dict[str, Sequence[int]]) -> None:
        """Build every pool the run can draw from (all specs × the lengths each fits) up front."""
        for s in specs:
            for length in fit[s.name]:
                self._get(s, length)

    def _get(self, spec: TaskSpec, length: int) -> tuple[Any, Any]:
        import torch

        key = (spec.name, length)
        if key not in self._pools:
            ids, tgt = build_pool(spec, self.seed, length, self.n, self.workers, self.cache_dir)
            self._pools[key] = (torch.from_numpy(ids.astype(np.int64)).to(self.device),
                                torch.from_numpy(tgt.astype(np.int64)).to(self.device))
        return self._pools[key]

    def batch(self, spec: TaskSpec, length: int, size: int, rng: np.random.Generator) -> tuple[Any, Any]:
        """``size`` samples drawn without replacement (with, if the pool is smaller) by ``rng``."""
        import torch

        ids, tgt = self._get(spec, length)
        idx = rng.choice(self.n, size=size, replace=size > self.n)
        sel = torch.from_numpy(idx)
        if torch.device(self.device).type == "cuda":  # a pageable copy would wait for the GPU every step
            sel = sel.pin_memory().to(self.device, non_blocking=True)
        else:
            sel = sel.to(self.device)
        return ids.index_select(0, sel), tgt.index_select(0, sel)
