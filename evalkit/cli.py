"""The ``evalkit`` command line. Heavy imports (torch, pandas) happen inside commands, so
``evalkit --help`` is fast. Bad input → one sentence on stderr and exit code 2."""

from __future__ import annotations

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

    return Console(stderr=False, highlight=False)


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
def run(specs: Sequence[str], models: str, lengths: list[int] | None, samples: int | None, seed: int | None,
        output_dir: str, device: str, overwrite: bool, limit: int | None, scoring: str, dry_run: bool) -> None:
    """Evaluate task SPECS (paths or built-in names) on --models; store and print recall."""
    from evalkit.runner import plan
    from evalkit.spec import load_model_spec, load_task_spec

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter("no model given", param_hint="--models")
    task_specs = [load_task_spec(s) for s in specs]
    model_specs = [load_model_spec(m) for m in names]
    cells = plan(task_specs, model_specs, lengths=lengths, samples=samples, seed=seed, scoring=scoring)
    console = _console()
    if dry_run:
        _print_plan(console, cells, output_dir)
        return
    failed = _run(console, cells, output_dir, device, overwrite, limit)
    sys.exit(1 if failed else 0)


def _print_plan(console: Any, cells: Sequence[Any], output_dir: str) -> None:
    from rich.table import Table

    from evalkit.runner import estimate_seconds
    from evalkit.store import Store, store_path

    store = Store.open_dir(output_dir) if store_path(output_dir).exists() else None
    done = store.complete_keys([c.cell_key for c in cells]) if store else set()
    t = Table(title=f"{len(cells)} planned cells")
    for col in ("cell", "spec", "model", "length", "axes", "samples", "status"):
        t.add_column(col)
    for c in cells:
        t.add_row(c.cell_key[:12], c.spec.name, c.model.name, str(c.context_length),
                  " ".join(f"{k}={v}" for k, v in c.axes), str(c.n_samples),
                  "stored" if c.cell_key in done else "pending")
    console.print(t)
    pending = [c for c in cells if c.cell_key not in done]
    secs = estimate_seconds(pending, store)
    console.print(f"{len(cells)} cells ({len(done)} stored, {len(pending)} pending, "
                  f"{sum(c.n_samples for c in pending)} samples); estimated time ≈ {secs:.0f} s")


def _run(console: Any, cells: Sequence[Any], output_dir: str, device: str, overwrite: bool, limit: int | None) -> bool:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from evalkit.models import ADAPTERS
    from evalkit.runner import execute

    random_models = sorted({c.model.name for c in cells if ADAPTERS.get(c.model.kind).random_weights(c.model)})
    if random_models:
        console.print(f"[bold red]WARNING: {', '.join(random_models)} ha{'s' if len(random_models) == 1 else 've'} "
                      "no checkpoint and run with RANDOM weights; their recall means nothing (recorded as random_weights=1).[/]")
    total = sum(c.n_samples for c in cells)
    command = " ".join(["evalkit", *sys.argv[1:]])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
        job = bar.add_task("evaluating", total=total)

        def on_cell(cell: Any, status: str) -> None:
            bar.update(job, description=f"{cell.label}")
            if status == "failed":
                console.print(f"[red]failed[/]: {cell.label}")

        try:
            result = execute(cells, output_dir, device=device, overwrite=overwrite, limit=limit,
                             progress=lambda n: bar.advance(job, n), on_cell=on_cell, command=command)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted: every finished cell is stored in {output_dir}; run the same command again to continue")
            sys.exit(130)
        bar.update(job, completed=total)
    _print_summary(console, result)
    return bool(result.failed)


def _print_summary(console: Any, result: Any) -> None:
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
        console.print(f"[red]failed[/] {label}: {reason}")
    if result.random_models:
        console.print(f"[bold red]RANDOM WEIGHTS: {', '.join(result.random_models)} (no checkpoint)[/]")


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
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--level", type=click.Choice(["samples", "cells"]), default="samples", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@OUTPUT_DIR
@STORE
def export(fmt: str, level: str, output: str | None, output_dir: str, store_path: str | None) -> None:
    """Export stored results as CSV or JSON (one row per sample, or per cell)."""
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


if __name__ == "__main__":
    main()
