"""Sweeps that train: give every variant of a model spec with a ``train:`` block its checkpoint.

    prepare_models(model specs, output_dir, train_missing=...)  → Prepared (specs with checkpoints)

A model spec may sweep its architecture and carry a training recipe (``evalkit/spec.py``). Such a
variant has no checkpoint of its own: ``evalkit run ... --train-missing`` trains it with the trainer
(``evalkit/train.py``) and caches the result at

    CHECKPOINT_DIR/<variant name, file-safe>-<recipe_hash>/      (CHECKPOINT_DIR: --checkpoint-dir,
                                                                 default OUTPUT_DIR/checkpoints)

``recipe_hash`` covers the resolved architecture, every TrainConfig value and the task specs'
contents, so:

- a variant is trained once: a later run finds its directory (``train_log.jsonl`` ends with the
  trainer's ``end`` event) and evaluates it; the cell keys then hold the weights' hash, as for any
  checkpoint;
- a changed recipe or architecture is a new directory (the old one stays, and so do its results);
- a training that was killed resumes from the directory's ``trainer_state.pt``;
- a cached checkpoint whose config is not its variant's (copied in, edited) is refused before
  anything trains or is stored.

Without ``train_missing``, a variant with no finished training is refused (``CheckpointError``,
exit 2): evaluating an untrained model by accident would store recall that means nothing. Specs
without ``train:`` pass through unchanged (random weights stay possible, and flagged, as before).
Every check (task specs fit the curriculum, cached configs match) runs for all variants before
the first one trains.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import CheckpointError
from evalkit.spec import ModelSpec, TaskSpec, load_task_spec

CHECKPOINTS = "checkpoints"  # default cache, inside the output directory


@dataclass
class Prepared:
    """What ``prepare_models`` did: the specs to evaluate and which variants it trained."""

    models: list[ModelSpec]  # every given spec, trained variants with their checkpoint set
    trained: list[str] = field(default_factory=list)  # trained (or resumed) by this call
    cached: list[str] = field(default_factory=list)  # found finished in the cache
    untrained: list[str] = field(default_factory=list)  # dry run only: would be trained
    dirs: dict[str, Path] = field(default_factory=dict)  # variant name → its cache directory


@dataclass(frozen=True)
class _Job:
    spec: ModelSpec
    tasks: tuple[TaskSpec, ...]
    cfg: Any  # TrainConfig
    out: Path


def cache_root(output_dir: str | Path, checkpoint_dir: str | Path | None = None) -> Path:
    return Path(checkpoint_dir) if checkpoint_dir is not None else Path(output_dir) / CHECKPOINTS


def file_name(name: str) -> str:
    """A variant name as a directory name: ``sweep[attention_fraction=0.125]`` →
    ``sweep_attention_fraction=0.125``."""
    return re.sub(r"[^\w.=+-]+", "_", name).strip("_") or "model"


def variant_dir(spec: ModelSpec, root: Path, recipe: tuple[tuple[TaskSpec, ...], Any] | None = None) -> Path:
    """Where the trained checkpoint of ``spec`` (a spec with ``train:``) lives under ``root``;
    ``recipe``: its already parsed ``_recipe(spec)``, if the caller has it."""
    from evalkit.train import recipe_hash

    tasks, cfg = recipe or _recipe(spec)
    return root / f"{file_name(spec.name)}-{recipe_hash(spec, tasks, cfg)}"


def is_finished(out: Path) -> bool:
    """A training that reached its end: weights, config, and a log whose last row is ``end``."""
    from evalkit.train import LOG_FILE

    log = out / LOG_FILE
    if not ((out / "model.safetensors").is_file() and (out / "config.json").is_file() and log.is_file()):
        return False
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    try:
        return bool(lines) and json.loads(lines[-1]).get("event") == "end"
    except json.JSONDecodeError:  # a torn last line: the run did not end cleanly
        return False


def _recipe(spec: ModelSpec) -> tuple[tuple[TaskSpec, ...], Any]:
    from evalkit.train import make_config

    return tuple(load_task_spec(t) for t in spec.train_tasks), make_config(dict(spec.train))


def prepare_models(
    models: Sequence[ModelSpec],
    output_dir: str | Path,
    *,
    train_missing: bool = False,
    checkpoint_dir: str | Path | None = None,
    device: str = "auto",
    dry_run: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[ModelSpec, int, int, dict[str, Any]], None] | None = None,
) -> Prepared:
    """Give every spec with a ``train:`` block its cached checkpoint, training the missing ones
    (``train_missing``) one after the other on ``device``. ``log(line)`` receives one line per
    variant; ``progress(spec, step, steps, info)`` the trainer's per-step progress. With
    ``dry_run`` nothing trains: untrained variants are listed and keep no checkpoint."""
    from evalkit.models import ADAPTERS
    from evalkit.train import preflight

    say = log or (lambda line: None)
    root = cache_root(output_dir, checkpoint_dir)
    result = Prepared(models=[])
    jobs: list[_Job] = []
    for spec in models:
        if not spec.trains:
            result.models.append(spec)
            continue
        tasks, cfg = _recipe(spec)
        out = variant_dir(spec, root, (tasks, cfg))
        result.dirs[spec.name] = out
        if is_finished(out):
            trained = dataclasses.replace(spec, checkpoint=str(out.resolve()))
            try:
                ADAPTERS.get(spec.kind).check(trained)
            except CheckpointError as e:
                raise CheckpointError(f"cached checkpoint of model '{spec.name}' ({spec.path}) does not match its "
                                      f"spec: {e}; delete {out} to train it again") from None
            result.models.append(trained)
            result.cached.append(spec.name)
            continue
        preflight(spec, tasks, cfg)  # before anything trains: a recipe that cannot run fails now
        jobs.append(_Job(spec, tasks, cfg, out))
        result.models.append(spec)
    if not jobs:
        for name in result.cached:
            say(f"{name}: trained checkpoint found in {result.dirs[name]}")
        return result
    if dry_run:
        result.untrained = [j.spec.name for j in jobs]
        return result
    if not train_missing:
        names = ", ".join(f"'{j.spec.name}'" for j in jobs[:3]) + (f" and {len(jobs) - 3} more" if len(jobs) > 3 else "")
        raise CheckpointError(f"{jobs[0].spec.path}: model{'s' if len(jobs) > 1 else ''} {names} "
                              f"{'have' if len(jobs) > 1 else 'has'} a train: block but no trained checkpoint in "
                              f"{root}; pass --train-missing (evalkit.run(..., train_missing=True)) to train "
                              f"{'them' if len(jobs) > 1 else 'it'} first, or --checkpoint-dir where they were trained")
    for name in result.cached:
        say(f"{name}: trained checkpoint found in {result.dirs[name]}")
    trained = {j.spec.name: _train_one(j, device, command, say, progress) for j in jobs}
    result.models = [dataclasses.replace(m, checkpoint=str(trained[m.name].resolve())) if m.name in trained else m
                     for m in result.models]
    result.trained = list(trained)
    return result


def _train_one(job: _Job, device: str, command: str | None, say: Callable[[str], None],
               progress: Callable[[ModelSpec, int, int, dict[str, Any]], None] | None) -> Path:
    """Train (or resume) one variant into its cache directory, holding the directory's lock so
    that two runs never train into it at once."""
    from evalkit.store import writer_lock
    from evalkit.train import STATE_FILE, train

    job.out.mkdir(parents=True, exist_ok=True)
    with writer_lock(job.out):
        resuming = (job.out / STATE_FILE).is_file()
        say(f"{job.spec.name}: {'resuming' if resuming else 'training'} ({job.cfg.steps} steps on "
            f"{', '.join(t.name for t in job.tasks)}) into {job.out}")
        r = train(job.spec, job.tasks, job.cfg, job.out, device=device, resume=True, command=command,
                  progress=(lambda s, n, info: progress(job.spec, s, n, info)) if progress else None)
    acc = ", ".join(f"{k} {v:.3f}" for k, v in r.eval_acc.items())
    say(f"{job.spec.name}: trained {r.steps} steps ({r.stopped}) in {r.wall_s:.1f} s on {r.device}; held-out {acc}")
    return job.out
