"""Store: atomic cells, schema versioning (migrate forward / refuse newer), the writer lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from evalkit import store as store_mod
from evalkit.errors import StoreError
from evalkit.store import Record, Store, writer_lock


def _cell(key: str, status: str = "complete") -> dict:
    return {"cell_key": key, "sample_key": "s", "run_id": "r", "status": status, "spec": "needle", "task": "needle",
            "model": "m", "model_id": "id", "model_kind": "native", "random_weights": 1, "format": "tokens",
            "context_length": 64, "axes": {"depth": 0.5}, "params": {}, "seed": 0, "n_samples": 2,
            "scoring": "teacher_forced", "n_correct": 1, "accuracy": 0.5, "finished_at": "now"}


def _records(n: int) -> list[Record]:
    return [Record(i, "ph", "th", "prompt", "pred", "ans", i % 2 == 0, {"q": 1.0}) for i in range(n)]


def test_write_cell_replaces_atomically(tmp_path: Path):
    s = Store.open_dir(tmp_path, create=True)
    s.write_cell(_cell("a"), _records(3))
    s.write_cell(_cell("a"), _records(2))  # overwrite: old records gone, no duplicates
    assert [r["idx"] for r in s.records("a")] == [0, 1]
    assert s.complete_keys(["a", "b"]) == {"a"}

    class Boom(Exception):
        pass

    bad = _records(2) + [Record(1, "x", "x", "x", "x", "x", True, {})]  # duplicate idx → integrity error
    with pytest.raises(sqlite3.IntegrityError):
        s.write_cell(_cell("b"), bad)
    assert s.complete_keys(["b"]) == set() and s.records("b") == []  # nothing half-written
    s.write_cell(_cell("c", "failed"), [])
    assert s.complete_keys(["c"]) == set()
    s.close()


def test_newer_schema_is_refused_untouched(tmp_path: Path):
    s = Store.open_dir(tmp_path, create=True)
    s.write_cell(_cell("a"), _records(1))
    s.conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s.close()
    before = (tmp_path / "evalkit.sqlite").read_bytes()
    with pytest.raises(StoreError, match=f"schema version 99, newer than this evalkit's {store_mod.SCHEMA_VERSION}"):
        Store.open_dir(tmp_path)
    s2 = sqlite3.connect(tmp_path / "evalkit.sqlite")
    assert s2.execute("SELECT value FROM meta").fetchone()[0] == "99"
    assert s2.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    s2.close()
    assert len(before) > 0


def test_older_schema_is_migrated_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = Store.open_dir(tmp_path, create=True)
    s.write_cell(_cell("a"), _records(2))
    s.close()

    def add_note(c: sqlite3.Connection) -> None:
        c.execute("ALTER TABLE cells ADD COLUMN note TEXT DEFAULT 'migrated'")

    now = store_mod.SCHEMA_VERSION
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", now + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, now, add_note)
    s = Store.open_dir(tmp_path)
    assert s.schema_version() == now + 1
    assert s.conn.execute("SELECT note FROM cells WHERE cell_key='a'").fetchone()[0] == "migrated"
    assert len(s.records("a")) == 2
    s.close()


def test_v1_store_gets_the_text_format_columns(tmp_path: Path):
    """A store written by schema 1 (no records.length, no cells.n_skipped) migrates to 2: its rows
    stay readable with NULL in the new columns, and new cells store achieved lengths."""
    s = Store.open_dir(tmp_path, create=True)
    s.write_cell(_cell("old"), _records(2))
    s.conn.execute("ALTER TABLE records DROP COLUMN length")  # exactly the schema-1 layout
    s.conn.execute("ALTER TABLE cells DROP COLUMN n_skipped")
    s.conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    s.close()
    s = Store.open_dir(tmp_path)
    assert s.schema_version() >= 2
    assert [r["length"] for r in s.records("old")] == [None, None]
    assert s.cells("WHERE cell_key='old'")[0]["n_skipped"] is None
    s.write_cell({**_cell("new"), "n_skipped": 1}, [Record(0, "p", "t", "", "x", "y", True, {}, length=250)])
    assert s.records("new")[0]["length"] == 250 and s.cells("WHERE cell_key='new'")[0]["n_skipped"] == 1
    s.close()


def test_missing_migration_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    Store.open_dir(tmp_path, create=True).close()
    now = store_mod.SCHEMA_VERSION
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", now + 1)
    with pytest.raises(StoreError, match=f"no migration from store schema version {now}"):
        Store.open_dir(tmp_path)


def test_not_a_store(tmp_path: Path):
    (tmp_path / "evalkit.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a readable evalkit store"):
        Store.open_dir(tmp_path)
    with pytest.raises(StoreError, match="no results store"):
        Store.open_dir(tmp_path / "empty")


def test_writer_lock_refuses_second_writer(tmp_path: Path):
    with writer_lock(tmp_path):
        with pytest.raises(StoreError, match="another evalkit run is writing"):
            with writer_lock(tmp_path):
                pass
    with writer_lock(tmp_path):  # released
        pass
