"""SQLite results store (WAL): the one source of truth for runs, cells, per-sample records, costs.

A cell and all its records are written in one transaction, so a crash or Ctrl-C leaves either the
whole cell or nothing; resume = skip cells whose key is ``complete``. The schema is versioned
(``meta.schema_version``): an older store is migrated forward in a transaction, a newer one is
refused. One writer at a time per output directory (an advisory file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import StoreError

SCHEMA_VERSION = 2
STORE_FILE = "evalkit.sqlite"
LOCK_FILE = ".evalkit.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
  command TEXT, git_commit TEXT, evalkit_version TEXT, torch_version TEXT, python_version TEXT,
  device TEXT, device_name TEXT, seed INTEGER, specs TEXT
);
CREATE TABLE IF NOT EXISTS cells (
  cell_key TEXT PRIMARY KEY, sample_key TEXT NOT NULL, run_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('complete', 'failed')), error TEXT,
  spec TEXT NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL, model_id TEXT NOT NULL,
  model_kind TEXT NOT NULL, random_weights INTEGER NOT NULL, format TEXT NOT NULL,
  context_length INTEGER NOT NULL, axes TEXT NOT NULL, params TEXT NOT NULL, seed INTEGER NOT NULL,
  n_samples INTEGER NOT NULL, scoring TEXT NOT NULL, n_correct INTEGER, accuracy REAL,
  ci_low REAL, ci_high REAL, metrics TEXT, model_info TEXT, device TEXT, wall_s REAL,
  tokens_per_s REAL, finished_at TEXT NOT NULL, n_skipped INTEGER
);
CREATE TABLE IF NOT EXISTS records (
  cell_key TEXT NOT NULL REFERENCES cells(cell_key), idx INTEGER NOT NULL,
  prompt_hash TEXT NOT NULL, target_hash TEXT NOT NULL, prompt TEXT, prediction TEXT NOT NULL,
  answer TEXT NOT NULL, correct INTEGER NOT NULL, scores TEXT NOT NULL, length INTEGER,
  PRIMARY KEY (cell_key, idx)
);
CREATE INDEX IF NOT EXISTS cells_by_run ON cells(run_id);
CREATE TABLE IF NOT EXISTS costs (
  model_id TEXT NOT NULL, model TEXT NOT NULL, device TEXT NOT NULL, device_name TEXT NOT NULL,
  context_length INTEGER NOT NULL, batch INTEGER NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('ok', 'oom', 'too_long', 'error')), error TEXT,
  prefill_s REAL, prefill_tokens_per_s REAL, decode_s_per_token REAL, peak_mem_bytes INTEGER,
  kv_cache_bytes INTEGER, fixed_state_bytes INTEGER, flops_per_token REAL, repeats INTEGER,
  path TEXT, model_info TEXT, run_id TEXT, measured_at TEXT NOT NULL,
  PRIMARY KEY (model_id, device_name, context_length, batch)
);
"""



def _v1_to_v2(c: sqlite3.Connection) -> None:
    """Text format: the achieved length of each sample (``records.length``) and the samples a
    cell skipped as over-length (``cells.n_skipped``). Old rows keep NULL: their samples are
    ``tokens`` renderings, whose length is always the cell's context length, and none skipped."""
    c.execute("ALTER TABLE records ADD COLUMN length INTEGER")
    c.execute("ALTER TABLE cells ADD COLUMN n_skipped INTEGER")


# version v → function migrating a store at v to v + 1 (runs inside one transaction)
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2}

CELL_COLUMNS = (
    "cell_key", "sample_key", "run_id", "status", "error", "spec", "task", "model", "model_id",
    "model_kind", "random_weights", "format", "context_length", "axes", "params", "seed",
    "n_samples", "scoring", "n_correct", "accuracy", "ci_low", "ci_high", "metrics", "model_info",
    "device", "wall_s", "tokens_per_s", "finished_at", "n_skipped",
)
RECORD_COLUMNS = ("cell_key", "idx", "prompt_hash", "target_hash", "prompt", "prediction", "answer", "correct",
                  "scores", "length")
COST_COLUMNS = (
    "model_id", "model", "device", "device_name", "context_length", "batch", "status", "error",
    "prefill_s", "prefill_tokens_per_s", "decode_s_per_token", "peak_mem_bytes", "kv_cache_bytes",
    "fixed_state_bytes", "flops_per_token", "repeats", "path", "model_info", "run_id", "measured_at",
)
JSON_COLUMNS = ("axes", "params", "metrics", "model_info", "scores", "specs")


@dataclass(frozen=True)
class Record:
    """One scored sample."""

    idx: int
    prompt_hash: str
    target_hash: str
    prompt: str
    prediction: str
    answer: str
    correct: bool
    scores: dict[str, Any]
    length: int | None = None  # achieved context length of this sample (text format); None = the cell's


def store_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / STORE_FILE


class Store:
    """Open (or create, when ``create``) the store in ``output_dir``."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and (not self.path.exists() or (self.path.is_file() and self.path.stat().st_size == 0)):
            empty = " (an empty file: never written, or not a store)" if self.path.exists() else ""
            raise StoreError(f"no results store at {self.path}{empty} (run `evalkit run ... --output-dir "
                             f"{self.path.parent}` first)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_not_truncated()
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if create:  # a writer checks every page first: it never adds rows to a corrupt store
                problem = self.conn.execute("PRAGMA quick_check").fetchone()[0]
                if problem != "ok":
                    raise StoreError(f"{self.path}: corrupt store ({problem}); restore it from a copy "
                                     "(it was left untouched)")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a readable evalkit store ({e})") from None

    def _check_not_truncated(self) -> None:
        """Refuse a store file shorter than its own header says (a torn copy, a full disk): SQLite
        would read the missing pages as garbage or fail half-way through a report. Only checked
        when there is no WAL to replay (a checkpoint in progress may grow the file)."""
        wal = self.path.with_name(self.path.name + "-wal")
        if not self.path.is_file() or (wal.exists() and wal.stat().st_size > 0):
            return
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(100)
        if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
            return  # not SQLite at all: sqlite3 says so below
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        pages = int.from_bytes(head[28:32], "big")
        header_valid = pages > 0 and head[24:28] == head[92:96]
        if size % page or (header_valid and size < pages * page):
            raise StoreError(f"{self.path}: truncated store ({size} bytes; its header says {pages} pages of "
                             f"{page} bytes); restore it from a copy (it was left untouched)")

    @contextlib.contextmanager
    def _reading(self, action: str = "read") -> Iterator[None]:
        """SQLite errors (a corrupt page, a lock held past the timeout) become one StoreError
        naming the file; constraint violations stay what they are (a bug, not bad input)."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot {action} the store ({e}); it may be corrupt") from None

    @classmethod
    def open_dir(cls, output_dir: str | Path, create: bool = False) -> Store:
        return cls(store_path(output_dir), create=create)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._reading("write to"):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back already (corrupt, full disk)
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ schema
    def _init_schema(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise StoreError(f"{self.path}: an SQLite file that is not an evalkit store (tables: {sorted(tables)})")
            with self.transaction() as c:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store has schema version {version}, newer than this evalkit's "
                f"{SCHEMA_VERSION}; upgrade evalkit to read it (the store was left untouched)"
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        with self.transaction() as c:
            while version < SCHEMA_VERSION:
                step = MIGRATIONS.get(version)
                if step is None:
                    raise StoreError(f"{self.path}: no migration from store schema version {version}")
                step(c)
                version += 1
            c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))

    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    # ------------------------------------------------------------------ runs
    def start_run(self, run: dict[str, Any]) -> None:
        """Record a new run. Call it only while holding the ``writer_lock``: any run still marked
        ``running`` then died without recording its end (SIGKILL, power loss) and becomes ``killed``."""
        cols = ",".join(run)
        vals = [json.dumps(v) if k in JSON_COLUMNS else v for k, v in run.items()]
        with self.transaction() as c:
            c.execute("UPDATE runs SET status='killed' WHERE status='running'")
            c.execute(f"INSERT INTO runs ({cols}) VALUES ({','.join('?' * len(run))})", vals)

    def finish_run(self, run_id: str, status: str, finished_at: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=?, finished_at=? WHERE run_id=?", (status, finished_at, run_id))

    # ------------------------------------------------------------------ cells
    def complete_keys(self, keys: Sequence[str]) -> set[str]:
        out: set[str] = set()
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT cell_key FROM cells WHERE status='complete' AND cell_key IN ({','.join('?' * len(chunk))})"
            with self._reading():
                out.update(r[0] for r in self.conn.execute(q, chunk))
        return out

    def write_cell(self, cell: dict[str, Any], records: Sequence[Record]) -> None:
        """Replace the cell and its records atomically."""
        row = [json.dumps(cell.get(k)) if k in JSON_COLUMNS else cell.get(k) for k in CELL_COLUMNS]
        with self.transaction() as c:
            c.execute("DELETE FROM records WHERE cell_key=?", (cell["cell_key"],))
            c.execute(f"INSERT OR REPLACE INTO cells ({','.join(CELL_COLUMNS)}) "
                      f"VALUES ({','.join('?' * len(CELL_COLUMNS))})", row)
            c.executemany(
                f"INSERT INTO records ({','.join(RECORD_COLUMNS)}) VALUES ({','.join('?' * len(RECORD_COLUMNS))})",
                [(cell["cell_key"], r.idx, r.prompt_hash, r.target_hash, r.prompt, r.prediction,
                  r.answer, int(r.correct), json.dumps(r.scores), r.length) for r in records],
            )

    def cells(self, where: str = "", args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._reading():
            rows = self.conn.execute(f"SELECT * FROM cells {where}", args).fetchall()
        return [_decode(r) for r in rows]

    def records(self, cell_key: str) -> list[dict[str, Any]]:
        with self._reading():
            rows = self.conn.execute("SELECT * FROM records WHERE cell_key=? ORDER BY idx", (cell_key,)).fetchall()
        return [_decode(r) for r in rows]

    # ------------------------------------------------------------------ costs
    def write_cost(self, row: dict[str, Any]) -> None:
        """Insert or replace one cost point (key: model_id, device_name, context_length, batch)."""
        vals = [json.dumps(row.get(k)) if k in JSON_COLUMNS else row.get(k) for k in COST_COLUMNS]
        with self.transaction() as c:
            c.execute(f"INSERT OR REPLACE INTO costs VALUES ({','.join('?' * len(COST_COLUMNS))})", vals)

    def costs(self, where: str = "", args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._reading():
            return [_decode(r) for r in self.conn.execute(f"SELECT * FROM costs {where}", args)]

    def runs(self) -> list[dict[str, Any]]:
        with self._reading():
            return [_decode(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY started_at")]


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    return {k: (json.loads(row[k]) if k in JSON_COLUMNS and row[k] is not None else row[k]) for k in row.keys()}


@contextlib.contextmanager
def writer_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold the output directory's writer lock, or refuse clearly if another run holds it."""
    d = Path(output_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another evalkit run is writing to {d} (lock {d / LOCK_FILE} is held); wait for it or use another --output-dir") from None
        yield
    finally:
        os.close(fd)
