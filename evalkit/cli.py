"""The ``evalkit`` command line. Heavy imports (torch, pandas) happen inside commands, so
``evalkit --help`` is fast. Bad input → one sentence on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from evalkit.errors import EvalkitError

OUTPUT_DIR = click.option("--output-dir", "-d", default="runs", show_default=True, type=click.Path(file_okay=False),
                          help="Directory holding the results store (evalkit.sqlite).")
STORE = click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
                     help="Path of a store file; overrides --output-dir.")


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got '{value}'")
    return out


def _console() -> Any:
    from rich.console import Console

    import shutil

    # not a terminal (CI logs, pipes): rich would wrap at 80 columns and cut the table's cells
    width = None if sys.stdout.isatty() else max(160, shutil.get_terminal_size((160, 24)).columns)
    return Console(stderr=False, highlight=False, width=width)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evalkit")
def cli() -> None:
    """evalkit: long-context recall versus cost for transformers, SSMs and hybrids."""


# ----------------------------------------------------------------------------------- run
@cli.command()
@click.argument("specs", nargs=-1, required=True)
@click.option("--models", "-m", required=True, help="Comma-separated model names, spec paths or checkpoint dirs.")
@click.option("--lengths", callback=_ints, help="Comma-separated context lengths (overrides the specs).")
@click.option("--samples", type=click.IntRange(min=1), help="Samples per cell (overrides the specs).")
@click.option("--seed", type=int, help="Seed (overrides the specs).")
@OUTPUT_DIR
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Recompute cells already in the store.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most N pending cells now; re-run for the rest.")
@click.option("--scoring", type=click.Choice(["teacher_forced", "greedy"]), default="teacher_forced", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the planned cells, their count and an estimated time.")
@click.option("--no-cost", is_flag=True, help="Skip the cost probe (prefill / decode latency, memory) per model and length.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where models run: this process, or Ray actors (one model per worker; docs/distributed.md).")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="A running Ray cluster (--executor ray); default: start a local one.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray workers at once (default: as many as the cluster's GPUs, or CPUs, allow).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
              help="GPUs each Ray worker holds (default 0; e.g. 1, or the tensor-parallel size for vLLM).")
@click.option("--train-missing", is_flag=True,
              help="Train every variant of a model spec with a train: block that has no cached checkpoint, then evaluate.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="Cache of trained variants (default: OUTPUT_DIR/checkpoints; docs/training.md).")
def run(specs: Sequence[str], models: str, lengths: list[int] | None, samples: int | None, seed: int | None,
        output_dir: str, device: str, overwrite: bool, limit: int | None, scoring: str, dry_run: bool,
        no_cost: bool, executor: str, ray_address: str | None, workers: int | None,
        gpus_per_worker: float | None, train_missing: bool, checkpoint_dir: str | None) -> None:
    """Evaluate task SPECS (paths or built-in names) on --models; store and print recall."""
    from evalkit.executors import make_executor
    from evalkit.runner import plan
    from evalkit.spec import load_model_specs, load_task_spec

    flags = {"--ray-address": ray_address, "--workers": workers, "--gpus-per-worker": gpus_per_worker}
    if executor == "local" and any(v is not None for v in flags.values()):
        given = ", ".join(k for k, v in flags.items() if v is not None)
        raise click.BadParameter(f"{given} only apply with --executor ray", param_hint="--executor")
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter("no model given", param_hint="--models")
    task_specs = [load_task_spec(s) for s in specs]
    model_specs = [v for m in names for v in load_model_specs(m)]
    if any(m.trains for m in model_specs):  # check the whole evaluation before training anything
        plan(task_specs, model_specs, lengths=lengths, samples=samples, seed=seed, scoring=scoring)
        model_specs = _train_variants(model_specs, output_dir, checkpoint_dir, train_missing, device, dry_run)
    cells = plan(task_specs, model_specs, lengths=lengths, samples=samples, seed=seed, scoring=scoring)
    console = _console()
    if dry_run:
        _print_plan(console, cells, output_dir)
        return
    ex = make_executor(executor, address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    failed = _run(console, cells, output_dir, device, overwrite, limit, cost=not no_cost, executor=ex)
    sys.exit(1 if failed else 0)


def _train_variants(model_specs: list[Any], output_dir: str, checkpoint_dir: str | None, train_missing: bool,
                    device: str, dry_run: bool) -> list[Any]:
    """Model specs with ``train:`` → their cached or freshly trained checkpoints (evalkit/sweeps.py);
    training progress goes to stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from evalkit.sweeps import prepare_models

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True) as bar:
        jobs: dict[str, Any] = {}

        def progress(spec: Any, step: int, total: int, info: dict[str, Any]) -> None:
            if spec.name not in jobs:
                jobs[spec.name] = bar.add_task(f"training {escape(spec.name)}", total=total)
            loss = "" if info.get("loss") is None else f" loss {info['loss']:.3f}"
            bar.update(jobs[spec.name], completed=step, description=f"training {escape(spec.name)} L={info['length']}{loss}")

        try:
            done = prepare_models(model_specs, output_dir, train_missing=train_missing, checkpoint_dir=checkpoint_dir,
                                  device=device, dry_run=dry_run, command=" ".join(["evalkit", *sys.argv[1:]]),
                                  log=lambda line: err.print(line, markup=False), progress=progress)
        except KeyboardInterrupt:
            bar.stop()
            err.print("interrupted: the training state is saved; run the same command again to resume it")
            sys.exit(130)
    if done.untrained:
        err.print(f"{len(done.untrained)} variant(s) not trained yet (--train-missing trains them; their cells below "
                  f"use untrained weights): {', '.join(done.untrained)}", markup=False)
    return done.models


def _print_plan(console: Any, cells: Sequence[Any], output_dir: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from evalkit.runner import estimate_seconds
    from evalkit.store import Store, store_path

    store = Store.open_dir(output_dir) if store_path(output_dir).exists() else None
    done = store.complete_keys([c.cell_key for c in cells]) if store else set()
    t = Table(title=f"{len(cells)} planned cells")
    for col in ("cell", "spec", "model", "length", "axes", "samples", "status"):
        t.add_column(col)
    for c in cells:
        t.add_row(c.cell_key[:12], escape(c.spec.name), escape(c.model.name), str(c.context_length),
                  escape(" ".join(f"{k}={v}" for k, v in c.axes)), str(c.n_samples),
                  "stored" if c.cell_key in done else "pending")
    console.print(t)
    pending = [c for c in cells if c.cell_key not in done]
    secs = estimate_seconds(pending, store)
    console.print(f"{len(cells)} cells ({len(done)} stored, {len(pending)} pending, "
                  f"{sum(c.n_samples for c in pending)} samples); estimated time ≈ {secs:.0f} s")


def _run(console: Any, cells: Sequence[Any], output_dir: str, device: str, overwrite: bool, limit: int | None,
         cost: bool = True, executor: Any = None) -> bool:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from evalkit.models import ADAPTERS
    from evalkit.runner import execute

    random_models = sorted({c.model.name for c in cells if ADAPTERS.get(c.model.kind).random_weights(c.model)})
    if random_models:
        console.print(f"[bold red]WARNING: {escape(', '.join(random_models))} ha{'s' if len(random_models) == 1 else 've'} "
                      "no checkpoint and run with RANDOM weights; their recall means nothing (recorded as random_weights=1).[/]")
    total = sum(c.n_samples for c in cells)
    command = " ".join(["evalkit", *sys.argv[1:]])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
        job = bar.add_task("evaluating", total=total)

        def on_cell(cell: Any, status: str) -> None:
            bar.update(job, description=escape(cell.label))
            if status == "failed":
                console.print(f"[red]failed[/]: {escape(cell.label)}")

        try:
            result = execute(cells, output_dir, device=device, overwrite=overwrite, limit=limit,
                             progress=lambda n: bar.advance(job, n), on_cell=on_cell, command=command,
                             cost=cost, executor=executor)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted: every finished cell is stored in {output_dir}; run the same command again to continue")
            sys.exit(130)
        bar.update(job, completed=total)
    _print_summary(console, result)
    lost = sum(executor.stats.restarts.values()) if executor is not None else 0
    if lost:
        console.print(f"{executor.name}: {lost} worker(s) lost and replaced; "
                      f"{len(executor.stats.abandoned)} model(s) given up on after retries")
    if result.cost_points:
        console.print(f"cost probe: {result.cost_points} (model, length) points measured in {result.cost_s:.1f} s "
                      "(see `evalkit cost`; skip with --no-cost)")
    return bool(result.failed)


def _print_summary(console: Any, result: Any) -> None:
    from rich.markup import escape

    from evalkit.report.table import recall_table
    from evalkit.store import Store

    store = Store.open_dir(result.output_dir)
    try:
        console.print(recall_table(store, [c.cell_key for c in result.cells]))
    finally:
        store.close()
    path = Path(result.output_dir) / "evalkit.sqlite"
    console.print(f"{len(result.ran)} cells run, {len(result.reused)} reused from the store, "
                  f"{len(result.failed)} failed" + (f", {result.skipped} left for the next run (--limit)" if result.skipped else ""))
    console.print(f"store: {path}  (run {result.run_id})")
    for label, reason in result.failed.items():
        console.print(f"[red]failed[/] {escape(label)}: {escape(str(reason))}")
    if result.random_models:
        console.print(f"[bold red]RANDOM WEIGHTS: {escape(', '.join(result.random_models))} (no checkpoint)[/]")


# ----------------------------------------------------------------------------------- ls
@cli.command("ls")
@click.argument("what", type=click.Choice(["tasks", "models"]))
def ls(what: str) -> None:
    """List built-in task specs or models."""
    from rich.table import Table

    from evalkit.spec import builtin_dir, builtin_names, load_model_spec, load_task_spec

    t = Table()
    if what == "tasks":
        from evalkit.tasks import TASKS

        for col in ("spec", "task", "lengths", "sweep", "samples", "path"):
            t.add_column(col)
        for name in builtin_names("tasks"):
            s = load_task_spec(name)
            t.add_row(s.name, s.task, ",".join(map(str, s.lengths)),
                      " ".join(f"{k}={list(v)}" for k, v in s.sweep), str(s.samples), str(Path(s.path)))
        t.caption = f"task plugins: {', '.join(TASKS.names())}"
    else:
        from evalkit.models import ADAPTERS

        for col in ("model", "kind", "architecture", "checkpoint", "path"):
            t.add_column(col)
        for name in builtin_names("models"):
            m = load_model_spec(name)
            arch = " ".join(f"{k}={v}" for k, v in m.arch)
            t.add_row(m.name, m.kind, arch, Path(m.checkpoint).name if m.checkpoint else "RANDOM WEIGHTS", str(Path(m.path or "")))
        t.caption = f"adapters: {', '.join(ADAPTERS.names())}; models dir: {builtin_dir('models')}"
    _console().print(t)


# ----------------------------------------------------------------------------------- show
@cli.command()
@click.argument("cell")
@OUTPUT_DIR
@click.option("--n", "n_samples", default=5, show_default=True, type=click.IntRange(min=1), help="Samples to print.")
def show(cell: str, output_dir: str, n_samples: int) -> None:
    """Print the samples, prompts and predictions of one CELL (a cell key or a unique prefix)."""
    from rich.table import Table

    from evalkit.store import Store

    store = Store.open_dir(output_dir)
    try:
        rows = store.cells("WHERE cell_key LIKE ?", (cell + "%",))
        if not rows:
            raise EvalkitError(f"no cell with key '{cell}' in {output_dir} (see `evalkit export` for keys)")
        if len(rows) > 1:
            raise EvalkitError(f"cell key prefix '{cell}' is ambiguous in {output_dir} ({len(rows)} cells match)")
        c = rows[0]
        console = _console()
        axes = " ".join(f"{k}={v}" for k, v in c["axes"].items())
        console.print(f"cell {c['cell_key']}  {c['spec']} / {c['model']}  L={c['context_length']} {axes}")
        console.print(f"status {c['status']}  format {c['format']}  seed {c['seed']}  scoring {c['scoring']}  "
                      f"random_weights {bool(c['random_weights'])}")
        if c["status"] == "failed":
            console.print(f"[red]error[/]: {c['error']}")
            return
        console.print(f"accuracy {c['accuracy']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}] over {c['n_samples']} samples")
        t = Table(show_lines=True)
        for col in ("idx", "correct", "answer", "prediction", "prompt"):
            t.add_column(col, overflow="fold")
        for r in store.records(c["cell_key"])[:n_samples]:
            t.add_row(str(r["idx"]), "yes" if r["correct"] else "no", r["answer"], r["prediction"], r["prompt"])
        console.print(t)
    finally:
        store.close()


# ----------------------------------------------------------------------------------- export
@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "lm-eval"]), default="csv", show_default=True)
@click.option("--level", type=click.Choice(["samples", "cells"]), default="samples", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@OUTPUT_DIR
@STORE
@click.option("--task", "tasks", multiple=True, help="lm-eval: task spec to export (repeatable; default: all built-in).")
@click.option("--lengths", callback=_ints, help="lm-eval: context lengths (default: each spec's).")
@click.option("--samples", type=click.IntRange(min=1), help="lm-eval: samples per length (default: each spec's).")
def export(directory: str | None, fmt: str, level: str, output: str | None, output_dir: str, store_path: str | None,
           tasks: tuple[str, ...], lengths: list[int] | None, samples: int | None) -> None:
    """Export stored results as CSV or JSON (one row per sample, or per cell); or, with
    --format lm-eval DIRECTORY, write lm-eval task files that run evalkit's task specs."""
    if fmt == "lm-eval":
        if directory is None:
            raise click.UsageError("--format lm-eval needs the DIRECTORY to write the task files into")
        import re

        from evalkit.lmeval.export import export_lm_eval

        written = export_lm_eval(directory, tasks, lengths=lengths, samples=samples)
        groups = [p.stem for p in written if not re.search(r"_L\d+$", p.stem)]
        click.echo(f"wrote {len(written)} lm-eval task files to {directory} (groups: {', '.join(groups)}); run with\n"
                   f"  lm_eval --include_path {directory} --tasks {groups[0] if groups else '...'} --model hf "
                   "--model_args pretrained=PATH")
        return
    if directory is not None or tasks or lengths or samples:
        raise click.UsageError("DIRECTORY, --task, --lengths and --samples belong to --format lm-eval")
    from evalkit.results import cells_frame, records_frame
    from evalkit.store import Store

    store = Store(store_path) if store_path else Store.open_dir(output_dir)
    try:
        df = records_frame(store) if level == "samples" else cells_frame(store)
    finally:
        store.close()
    text = df.to_csv(index=False) if fmt == "csv" else df.to_json(orient="records", indent=1)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


# ----------------------------------------------------------------------------------- gate
@cli.command()
@click.argument("gate_file", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-d", default=None, type=click.Path(file_okay=False),
              help="Directory holding the candidate's store [default: the gate file's 'store:', else runs].")
@STORE
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
              help="Write the markdown summary here (it is also appended to $GITHUB_STEP_SUMMARY when set).")
def gate(gate_file: str, output_dir: str | None, store_path: str | None, junit_path: str | None,
         markdown_path: str | None) -> None:
    """Check stored results against GATE_FILE: exit 0 pass, 1 fail, 2 bad input (see docs/gate.md)."""
    from evalkit import gate as g

    spec = g.load_gate(gate_file)
    result = g.evaluate(spec, store=store_path or output_dir)
    console = _console()
    console.print(g.rich_table(result))
    for path in g.write_outputs(result, junit_path, markdown_path):
        console.print(f"wrote {path}")
    console.print(("[bold green]" if result.passed else "[bold red]") + g.summary_line(result) + "[/]")
    sys.exit(0 if result.passed else 1)


# ----------------------------------------------------------------------------------- report
@cli.command()
@OUTPUT_DIR
@STORE
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="File to write, '-' for stdout [default: reports/leaderboard.html or .md].")
@click.option("--format", "fmt", type=click.Choice(["html", "markdown"]), default="html", show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Recall that counts as 'recalled' for the effective context length, for every row "
                   "[default: the task's own (RULER's NIAH: 0.856), else 0.5].")
@click.option("--reference-length", type=click.IntRange(min=1),
              help="Context length for the cost columns and recall-vs-cost plots [default: the longest stored].")
def report(output_dir: str, store_path: str | None, output: str | None, fmt: str, threshold: float | None,
           reference_length: int | None) -> None:
    """Write the leaderboard: one self-contained HTML file (tables, plots, provenance) or markdown."""
    from evalkit.report.data import load_report, write_atomic
    from evalkit.store import Store

    store = Store(store_path) if store_path else Store.open_dir(output_dir)
    try:
        data = load_report(store, threshold=threshold, reference_length=reference_length)
        source = str(store.path)
    finally:
        store.close()
    if fmt == "html":
        from evalkit.report.html import render_html

        text = render_html(data, source=source)
    else:
        from evalkit.report.markdown import render_markdown

        text = render_markdown(data)
    if output == "-":
        click.echo(text, nl=False)
        return
    path = write_atomic(output or f"reports/leaderboard.{'html' if fmt == 'html' else 'md'}", text)
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {len(data.rows)} rows, {len(data.models)} models)")


# ----------------------------------------------------------------------------------- cost
@cli.command("cost")
@click.argument("model")
@click.option("--lengths", callback=_ints, default="256,512,1024,2048,4096", show_default=True,
              help="Comma-separated context lengths to probe.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed repeats (median reported).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Sequences per prefill.")
@click.option("--decode-tokens", type=click.IntRange(min=1), default=8, show_default=True,
              help="Decode steps timed per repeat.")
@click.option("--arch", "arch", multiple=True, metavar="KEY=VALUE",
              help="Override an architecture field (repeatable), e.g. --arch d_model=2048 --arch n_layers=48; "
                   "overrides run with random weights.")
@click.option("--dtype", default=None, metavar="DTYPE",
              help="Model dtype option (native: float32 | bfloat16 | float16; hf: also auto) [default: the spec's].")
@click.option("--prefill-chunk", type=click.IntRange(min=0), default=None, metavar="N",
              help="Native models: prefill in pieces of N tokens with state passing (bounds activation memory, "
                   "e.g. for 1M-token prompts); 0 = one pass [default: the spec's, else 0].")
@OUTPUT_DIR
def cost(model: str, lengths: list[int], device: str, repeats: int, batch: int, decode_tokens: int,
         arch: Sequence[str], dtype: str | None, prefill_chunk: int | None, output_dir: str) -> None:
    """Measure what MODEL (a name, spec path or checkpoint dir) costs per context length: prefill and
    decode latency, peak memory, KV-cache / state bytes, FLOPs/token, and the fitted exponent of
    prefill time vs length. No weights or training needed; rows go to the store."""
    import datetime
    import platform
    import uuid

    from evalkit import __version__
    from evalkit import cost as _cost
    from evalkit.models import ADAPTERS
    from evalkit.runner import _git_commit, resolve_device
    from evalkit.spec import load_model_spec
    from evalkit.store import Store, writer_lock

    spec = load_model_spec(model)
    if arch:
        spec = _arch_overrides(spec, arch)
    options = {k: v for k, v in (("dtype", dtype), ("prefill_chunk", prefill_chunk)) if v is not None}
    if options:
        spec = _option_overrides(spec, options)
    adapter_cls = ADAPTERS.get(spec.kind)
    device = resolve_device(device)
    console = _console()
    if not console.is_terminal:  # piped / captured: do not squeeze the table to 80 columns
        console.width = max(console.width, 120)
    import torch

    try:
        adapter = adapter_cls(spec, device)
    except (RuntimeError, MemoryError) as e:  # e.g. a realistic size that does not fit this device
        raise EvalkitError(f"model '{spec.name}' could not be built on {device}: {type(e).__name__}: {e}") from None

    dev_name = _cost.device_name(device)
    info = adapter.describe()
    console.print(f"{spec.name} ({spec.kind}, {info.get('params', 0) / 1e6:.2f} M params, layers "
                  f"{' '.join(info.get('layer_types', []))}){' RANDOM WEIGHTS' if adapter_cls.random_weights(spec) else ''}"
                  f" on {device} ({dev_name}{f', torch threads: {torch.get_num_threads()}' if device == 'cpu' else ''})")
    run_id = f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out = Path(output_dir)
    with writer_lock(out):
        store = Store.open_dir(out, create=True)
        try:
            store.start_run({
                "run_id": run_id, "started_at": _cost._now(), "status": "running",
                "command": " ".join(["evalkit", *sys.argv[1:]]), "git_commit": _git_commit(),
                "evalkit_version": __version__, "torch_version": torch.__version__,
                "python_version": platform.python_version(), "device": _cost.device_kind(device),
                "device_name": dev_name, "seed": spec.init_seed, "specs": {"models": {spec.name: spec.to_dict()}},
            })
            status = "error"
            try:
                rows = []
                for L in sorted(set(lengths)):  # one length at a time, so progress shows and rows land
                    with console.status(f"probing L={L} ..."):
                        row = _cost.probe(adapter, [L], device, repeats=repeats, batch=batch,
                                          decode_tokens=decode_tokens, run_id=run_id)[0]
                    if rows and rows[-1]["status"] == "oom" and row["status"] != "too_long":
                        row.update(status="oom", error=f"not tried: out of memory at {rows[-1]['context_length']} tokens already",
                                   prefill_s=None, prefill_tokens_per_s=None, decode_s_per_token=None, peak_mem_bytes=None)
                    store.write_cost(row)
                    rows.append(row)
                status = "complete"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                store.finish_run(run_id, status, _cost._now())
        finally:
            store.close()
    paths = "/".join(sorted({r["path"] for r in rows if r["status"] == "ok"})) or "-"
    console.print(_cost_table(rows, f"cost of {spec.name} on {dev_name} (batch {batch}, median of {repeats}, path {paths})"))
    ok = [r for r in rows if r["status"] == "ok"]
    exp = _cost.fitted_exponent(rows)
    if len(ok) >= 2:
        tail = _cost.scaling_exponent([r["context_length"] for r in ok[-2:]], [r["prefill_s"] for r in ok[-2:]])
        console.print(f"prefill time ∝ length^{exp:.2f} (least squares over {len(ok)} lengths; "
                      f"{tail:.2f} between the two longest)  [attention → 2, SSM → 1]")
    else:
        console.print("prefill scaling exponent: needs at least two lengths that ran")
    console.print(f"model_id {rows[0]['model_id'] if rows else '-'}; store: {out / 'evalkit.sqlite'} (run {run_id})")


def _option_overrides(spec: Any, options: dict[str, Any]) -> Any:
    """The spec with adapter options set from the command line, validated by its adapter."""
    import dataclasses

    from evalkit.errors import SpecError
    from evalkit.models import ADAPTERS

    merged = {**spec.options_dict(), **options}
    try:
        ADAPTERS.get(spec.kind).validate_options(merged)
    except ValueError as e:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        raise SpecError(f"{flags}: {e} (model '{spec.name}', kind {spec.kind})") from None
    return dataclasses.replace(spec, options=tuple(sorted(merged.items())))


def _arch_overrides(spec: Any, pairs: Sequence[str]) -> Any:
    """Apply ``--arch key=value`` overrides (values parsed as YAML scalars / lists), validated like
    the spec's own arch; the result has no checkpoint (its weights would not fit)."""
    import dataclasses

    import yaml

    from evalkit.errors import SpecError
    from evalkit.models import ADAPTERS

    arch = spec.arch_dict()
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"--arch '{pair}': expected KEY=VALUE, e.g. --arch d_model=2048")
        try:
            arch[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise SpecError(f"--arch '{pair}': value '{raw}' is not a valid scalar or list") from None
    try:
        ADAPTERS.get(spec.kind).validate_arch(arch)
    except (ValueError, TypeError) as e:
        raise SpecError(f"--arch {' '.join(pairs)}: {e} (model '{spec.name}')") from None
    return dataclasses.replace(spec, arch=tuple(sorted(arch.items())), checkpoint=None,
                               name=f"{spec.name}[{','.join(p.strip() for p in pairs)}]")


def _cost_table(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """Rich table of cost rows; reasons of non-ok rows go in the caption to keep it narrow."""
    from rich.table import Table

    def num(v: Any, fmt: str, scale: float = 1.0) -> str:
        return "-" if v is None else format(v * scale, fmt)

    def size(v: Any) -> str:
        if v is None:
            return "-"
        for unit in ("B", "K", "M", "G"):
            if v < 1024 or unit == "G":
                return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
            v /= 1024
        return "-"

    t = Table(title=title)
    for col in ("length", "prefill ms", "tok/s", "decode ms/tok", "peak MB", "KV bytes", "state bytes", "GFLOP/tok", "status"):
        t.add_column(col, justify="left" if col == "status" else "right", no_wrap=col in ("length", "status"))
    notes = []
    for r in rows:
        if r["status"] != "ok":
            notes.append(f"L={r['context_length']} {r['status']}: {r['error']}")
        t.add_row(str(r["context_length"]), num(r["prefill_s"], ".1f", 1e3), num(r["prefill_tokens_per_s"], ",.0f"),
                  num(r["decode_s_per_token"], ".2f", 1e3), num(r["peak_mem_bytes"], ".1f", 1 / 2**20),
                  size(r["kv_cache_bytes"]), size(r["fixed_state_bytes"]), num(r["flops_per_token"], ".4f", 1e-9),
                  r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]")
    t.caption = "\n".join(notes) or None
    t.caption_justify = "left"
    return t


@cli.command("train")
@click.argument("model_spec", required=False)
@click.option("--task", "tasks", help="Comma-separated task specs (paths or built-in names) to train on.")
@click.option("--recipe", type=click.Path(dir_okay=False), help="A training recipe (experiments/zoo/*.yaml); flags override it.")
@click.option("--steps", type=int, help="Optimiser steps (default 1000).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Checkpoint directory (default: checkpoints/MODEL).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: auto.")
@click.option("--batch-tokens", type=int, help="Tokens per batch (default 8192).")
@click.option("--lr", type=float, help="Peak learning rate (default 3e-3).")
@click.option("--seed", type=int, help="Init and training-data seed (default 0).")
@click.option("--max-length", type=int, help="Longest training context length (default: the specs' longest).")
@click.option("--target-acc", type=float, help="Stop once every task's held-out accuracy reaches this.")
@click.option("--eval-every", type=int, help="Steps between held-out evaluations (default 100).")
@click.option("--time-limit", type=float, help="Seconds; the schedule follows wall time too (not bit-reproducible).")
@click.option("--save-dtype", type=click.Choice(["float32", "bfloat16"]), help="dtype of model.safetensors.")
@click.option("--resume", is_flag=True, help="Continue from OUT/trainer_state.pt.")
@click.option("--pool", type=int, help="Train on a fixed set of N samples per (task, length), built once (default 0: "
              "fresh samples every step). Much faster on a GPU; see evalkit/trainpool.py.")
@click.option("--pool-dir", type=click.Path(file_okay=False), help="Cache the fixed training sets here (shared by runs).")
@click.option("--pool-workers", type=click.IntRange(min=1), default=min(8, os.cpu_count() or 1), show_default=True,
              help="Processes that build the fixed training sets.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (tiny models train fastest with 1).")
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="Replay each training step as a CUDA graph (default: on for CUDA devices).")
@click.option("--compile", "compile_", is_flag=True,
              help="Also run the graphed step's model under torch.compile (fuses the code around the scans).")
def train_cmd(model_spec: str | None, tasks: str | None, recipe: str | None, steps: int | None, out_dir: str | None,
              device: str | None, batch_tokens: int | None, lr: float | None, seed: int | None,
              max_length: int | None, target_acc: float | None, eval_every: int | None, time_limit: float | None,
              save_dtype: str | None, resume: bool, pool: int | None, pool_dir: str | None, pool_workers: int,
              threads: int | None, cuda_graph: bool | None, compile_: bool) -> None:
    """Train a native MODEL_SPEC on --task specs; write a checkpoint, a log and a model card."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from evalkit.spec import load_model_spec, load_task_spec
    from evalkit.train import TrainError, load_recipe, make_config, train

    r = load_recipe(recipe) if recipe else {"model": None, "tasks": [], "out": None, "device": "auto", "train": {}}
    model_ref = model_spec or r["model"]
    task_refs = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else r["tasks"]
    if not model_ref:
        raise TrainError("no model given: pass MODEL_SPEC or --recipe")
    if not task_refs:
        raise TrainError("no task given: pass --task TASK_SPEC[,TASK_SPEC...] or --recipe")
    flags = {"steps": steps, "batch_tokens": batch_tokens, "lr": lr, "seed": seed, "max_length": max_length,
             "target_acc": target_acc, "eval_every": eval_every, "time_limit": time_limit, "save_dtype": save_dtype,
             "pool": pool}
    cfg = make_config({**r["train"], **{k: v for k, v in flags.items() if v is not None}})
    mspec = load_model_spec(model_ref)
    specs = [load_task_spec(t) for t in task_refs]
    out = out_dir or r["out"] or str(Path("checkpoints") / mspec.name)
    console = _console()
    command = " ".join(["evalkit", *sys.argv[1:]])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
        job = bar.add_task(f"training {mspec.name}", total=cfg.steps)

        def progress(step: int, total: int, info: dict[str, Any]) -> None:
            loss = "" if info.get("loss") is None else f" loss {info['loss']:.3f}"
            bar.update(job, completed=step, description=f"training {mspec.name} L={info['length']}{loss}")
            if "eval" in info:
                console.print(f"step {step}: held-out " + ", ".join(f"{k} {v:.2f}" for k, v in info["eval"].items()))

        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            res = train(mspec, specs, cfg, out, device=device or r["device"], resume=resume, command=command,
                        progress=progress, pool_dir=pool_dir, pool_workers=pool_workers, cuda_graph=cuda_graph,
                        compile=compile_)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted: state saved in {out}; add --resume to continue")
            sys.exit(130)
    console.print(f"trained {mspec.name}: {res.steps} steps ({res.stopped}) in {res.wall_s:.1f} s on {res.device_name}, "
                  f"{res.tokens_per_s:,.0f} tokens/s; held-out " + ", ".join(f"{k} {v:.3f}" for k, v in res.eval_acc.items()))
    console.print(f"checkpoint, log and card in {out}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: EvalkitError → one sentence on stderr, exit 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except EvalkitError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # a path that cannot be read or written (-o /no/such/dir/x.html, a full disk)
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
