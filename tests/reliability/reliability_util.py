"""Shared pieces of the reliability suite: tiny offline models per adapter, store snapshots,
an in-process CLI call, the "one clear sentence" check, and trial / example counts from env vars.

Everything here is plain helpers (no fixtures), so Hypothesis tests can call them freely.

Scaling by hand (the CI defaults are sized for ~2-3 minutes on 2 cores):

    EVALKIT_KILL_TRIALS=200   kill trials of `evalkit run` (time-random + statement-indexed)
    EVALKIT_TRAIN_KILL_TRIALS=40   kill trials of `evalkit train`
    EVALKIT_FUZZ_EXAMPLES=2000     Hypothesis examples per fuzz test (CLI fuzz uses a quarter)
    EVALKIT_FUZZ_RANDOM=1          fresh random examples instead of the derandomized CI set
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

# cell columns that legitimately differ between two runs of the same cell (provenance, timing)
VOLATILE_CELL_COLUMNS = ("run_id", "finished_at", "wall_s", "tokens_per_s")


def env_int(name: str, default: int) -> int:
    """A positive count from the environment (for running more trials / examples by hand)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- tiny models per adapter
def _native_models(d: Path) -> list[Path]:
    """Two debug-flavor native models (a hybrid and a transformer), random weights."""
    return [
        write(d / "r-hybrid.yaml", "name: r-hybrid\nkind: native\narch: {flavor: debug, ssm: mamba2, "
                                   "attention_fraction: 0.5}\ninit_seed: 1\n"),
        write(d / "r-attn.yaml", "name: r-attn\nkind: native\narch: {flavor: debug, attention_fraction: 1.0}\n"
                                 "init_seed: 2\n"),
    ]


_HF_CHECKPOINTS: dict[str, Path] = {}


def _hf_models(d: Path) -> list[Path]:
    """A tiny random-weight Llama with a tokenizer trained offline (tests/hf/hf_tiny.py), built once
    per process; the spec is ``kind: hf`` (text format)."""
    if "llama" not in _HF_CHECKPOINTS:
        import atexit
        import shutil
        import sys
        import tempfile

        sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))
        from hf_tiny import build_checkpoint, train_tokenizer

        root = Path(tempfile.mkdtemp(prefix="evalkit-reliability-hf-"))
        atexit.register(shutil.rmtree, root, True)
        _HF_CHECKPOINTS["llama"] = build_checkpoint("llama", root / "llama", train_tokenizer("bpe"))
    return [write(d / "r-llama.yaml", f"name: r-llama\nkind: hf\ncheckpoint: {_HF_CHECKPOINTS['llama']}\n")]


@dataclass(frozen=True)
class Tiny:
    """How to get tiny, offline models of one adapter kind: ``build(dir)`` writes their model specs
    and returns the paths; ``lengths`` are three short context lengths its default format can
    render; ``share`` scales the kill trials / concurrency rounds (a slower adapter runs fewer)."""

    build: Callable[[Path], list[Path]]
    lengths: tuple[int, int, int]
    share: float = 1.0

    def __call__(self, d: Path) -> list[Path]:
        return self.build(d)


# One entry per adapter kind. A new adapter (vllm, ...) adds one here, and every reliability test
# parametrised over TINY_MODELS covers it; test_every_adapter_has_a_tiny_model fails until it does.
TINY_MODELS: dict[str, Tiny] = {
    "native": Tiny(_native_models, (64, 128, 256)),
    "hf": Tiny(_hf_models, (256, 384, 512), share=0.15),
}
# Adapters the trials leave out, and why: an explicit, reviewed list (test_reliability_coverage.py).
NOT_COVERED: dict[str, str] = {
    "vllm": "a vLLM engine takes tens of seconds to start in every process, which kill trials cannot afford; "
            "tests/vllm checks it against the hf adapter on the same cells",
}


def tiny_task(d: Path, name: str = "r-needle", lengths: Sequence[int] = (64, 128), samples: int = 4,
              depths: Sequence[float] = (0.0, 1.0)) -> Path:
    return write(d / f"{name}.yaml", f"task: needle\nlengths: [{', '.join(map(str, lengths))}]\n"
                                     f"samples: {samples}\nseed: 3\nparams:\n  depth: [{', '.join(map(str, depths))}]\n")


# --------------------------------------------------------------------------- the store, as data
def connect_ro(store_file: Path) -> sqlite3.Connection:
    """A read-only connection that cannot change the file (no WAL checkpoint on close)."""
    return sqlite3.connect(f"file:{store_file}?mode=ro", uri=True)


def store_rows(out: Path) -> dict[str, Any]:
    """The comparable content of a store: complete cells (without provenance / timing columns)
    and their records, keyed by cell key; plus every failed cell's key and error."""
    c = connect_ro(out / "evalkit.sqlite")
    c.row_factory = sqlite3.Row
    try:
        cells, failed = {}, {}
        for r in c.execute("SELECT * FROM cells"):
            row = {k: r[k] for k in r.keys() if k not in VOLATILE_CELL_COLUMNS}  # noqa: SIM118 (a Row iterates values)
            if r["status"] == "complete":
                cells[r["cell_key"]] = row
            else:
                failed[r["cell_key"]] = r["error"]
        records: dict[str, list[tuple]] = {}
        for r in c.execute("SELECT * FROM records ORDER BY cell_key, idx"):
            records.setdefault(r["cell_key"], []).append(tuple(r))
        return {"cells": cells, "records": records, "failed": failed}
    finally:
        c.close()


def logical_digest(out: Path) -> str | None:
    """sha256 of every row of every table (None when there is no store): equal digests mean
    nothing stored was touched, whatever SQLite did to its WAL files."""
    f = out / "evalkit.sqlite"
    if not f.exists():
        return None
    c = connect_ro(f)
    try:
        h = hashlib.sha256()
        for (table,) in c.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
            h.update(table.encode())
            for row in c.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                h.update(repr(tuple(row)).encode())
        return h.hexdigest()
    finally:
        c.close()


def files_of(d: Path) -> set[str]:
    """Files under ``d`` (recursively), without SQLite's transient -wal / -shm / -journal files."""
    if not d.exists():
        return set()
    return {str(p.relative_to(d)) for p in d.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal"))}


# --------------------------------------------------------------------------- the CLI, in-process
def call_cli(args: Sequence[str]) -> tuple[int, str, str]:
    """Run ``evalkit ARGS`` in this process: (exit code, stdout, stderr). Any exception that
    escapes ``main`` (a traceback for a user) is re-raised for the test to see."""
    from evalkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def error_sentence(stderr: str) -> str:
    """The one error line of a refused command, asserting there is exactly one and no traceback.

    evalkit's own errors are ``error: ...``; click's usage errors print ``Usage:`` / ``Try ...``
    lines and then one ``Error: ...`` line."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error: ", "Error: "))]
    assert len(errors) == 1, f"expected exactly one error line, got:\n{stderr}"
    others = [ln for ln in lines if ln not in errors and not ln.startswith(("Usage: ", "Try '"))]
    assert not others, f"unexpected extra stderr lines:\n{stderr}"
    text = errors[0].split(": ", 1)[1].strip()
    assert text, stderr
    return text


# --------------------------------------------------------------------------- the fork server
class ForkServer:
    """A running ``victim.py``: forks warm children that run ``evalkit`` argv and kills them on
    request (see victim.py for the job format). Use as a context manager."""

    def __init__(self, cwd: Path, warm_argv: Sequence[str] = ()) -> None:
        import json
        import subprocess
        import sys

        self._json = json
        # CUDA_VISIBLE_DEVICES="": the victims fork from a warm server, and CUDA does not survive a fork once the
        # parent has touched it (nor autograd's device threads, which its first backward starts on a CUDA build
        # with a GPU): on the GPU machine every forked training child failed (kernels/NOTES.md v14). The crash
        # and concurrency properties under test do not depend on the device; the victims run on the CPU.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "CUDA_VISIBLE_DEVICES": ""}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("victim.py")), json.dumps(list(warm_argv))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=env, text=True, bufsize=1)
        ready = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not ready:
            raise RuntimeError(f"victim server did not start (exit {self.proc.wait()})")

    def run(self, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start ``jobs`` together; wait for all (killing those that say so); their results."""
        full = [{"kill_after": None, "kill_at_stmt": None, "kill_in_save": None, "count_file": None,
                 "memory_limit_mb": None, **j} for j in jobs]
        self.proc.stdin.write(self._json.dumps({"jobs": full}) + "\n")  # type: ignore[union-attr]
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"victim server died (exit {self.proc.wait()})")
        return self._json.loads(line)["results"]

    def one(self, **job: Any) -> dict[str, Any]:
        return self.run([job])[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_text(path: str | Path) -> str:
    """A victim's stdout log followed by its stderr log (PATH.err), for assertion messages."""
    p, e = Path(path), Path(f"{path}.err")
    return (p.read_text() if p.exists() else "(no log)") + (e.read_text() if e.exists() else "")
