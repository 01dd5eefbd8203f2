"""Corrupt artifacts: torn or mismatched checkpoints, stores from a newer evalkit, truncated or
empty store files, a store deleted while a report reads it, torn trainer states. Each gets one
clear sentence and exit code 2, and nothing already stored or written is touched."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from reliability_util import (
    TINY_MODELS,
    call_cli,
    error_sentence,
    files_of,
    logical_digest,
    tiny_task,
    write,
)

from evalkit import store as store_mod


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with tiny models, a task, a gate file and a store from one uninterrupted run."""
    d = tmp_path_factory.mktemp("corrupt")
    models = TINY_MODELS["native"](d / "models")
    task = tiny_task(d / "tasks")
    code, _, err = call_cli(["run", str(task), "--models", ",".join(map(str, models)), "-d", str(d / "out"),
                             "--device", "cpu", "--no-cost"])
    assert code == 0, err
    write(d / "gate.yaml", "model: r-hybrid\nchecks:\n  - {task: r-needle, min_recall: 0.0}\n")
    return d


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path / "w")
    return tmp_path / "w"


def _snapshot(d: Path) -> tuple:
    return logical_digest(d), files_of(d)


def _commands(w: Path, store_file: Path) -> dict[str, list[str]]:
    """Every command that opens a store, pointed at ``store_file``'s directory (or the file)."""
    out = str(store_file.parent)
    task, model = str(w / "tasks" / "r-needle.yaml"), str(w / "models" / "r-hybrid.yaml")
    return {
        "run": ["run", task, "--models", model, "-d", out, "--device", "cpu", "--no-cost"],
        "dry-run": ["run", task, "--models", model, "-d", out, "--dry-run"],
        "report": ["report", "--store", str(store_file), "-o", str(w / "report.html")],
        "export": ["export", "-d", out, "-o", str(w / "export.csv")],
        "gate": ["gate", str(w / "gate.yaml"), "--store", str(store_file), "--junit", str(w / "junit.xml")],
        "show": ["show", "0", "-d", out],
        "cost": ["cost", model, "--lengths", "64", "--repeats", "1", "--decode-tokens", "1", "--device", "cpu",
                 "-d", out],
    }


# --------------------------------------------------------------------------- checkpoints
def _checkpoint(w: Path) -> Path:
    from evalkit.models.native.config import NativeConfig
    from evalkit.models.native.lm import NativeLM

    m = NativeLM(NativeConfig.from_dict({"flavor": "debug", "attention_fraction": 1.0}).resolved())
    m.init_weights(5)
    return m.save_pretrained(w / "ckpt")


def _cut_points(size: int, header_len: int) -> dict[str, int]:
    return {"empty": 0, "in-length-prefix": 4, "in-header": 8 + header_len // 2, "at-data-start": 8 + header_len,
            "mid-data": (8 + header_len + size) // 2, "one-byte-short": size - 1}


@pytest.mark.parametrize("cut", ["empty", "in-length-prefix", "in-header", "at-data-start", "mid-data", "one-byte-short"])
def test_truncated_checkpoint_is_refused_before_the_store_is_touched(work: Path, cut: str) -> None:
    ck = _checkpoint(work)
    f = ck / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: _cut_points(len(data), int.from_bytes(data[:8], "little"))[cut]])
    before = _snapshot(work / "out")
    code, _, err = call_cli(["run", str(work / "tasks" / "r-needle.yaml"), "--models", str(ck), "-d", str(work / "out")])
    assert code == 2 and str(f) in error_sentence(err)
    assert _snapshot(work / "out") == before


@pytest.mark.parametrize("damage, needle", [
    ("shape", "has shape"),  # the spec asks for another width than the weights have
    ("same-shapes", "differs from model spec"),  # a field that changes no tensor shape (rope_theta)
    ("no-config", "config.json: file not found"),
    ("garbage-config", "config.json"),
    ("extra-tensor", "unexpected tensor 'stray'"),
])
def test_checkpoint_that_does_not_match_its_spec_is_refused_untouched(work: Path, damage: str, needle: str) -> None:
    from safetensors.torch import load_file, save_file

    ck = _checkpoint(work)
    arch = "{flavor: debug, attention_fraction: 1.0}"
    if damage == "shape":
        arch = "{flavor: debug, attention_fraction: 1.0, d_model: 64}"
    elif damage == "same-shapes":
        arch = "{flavor: debug, attention_fraction: 1.0, rope_theta: 500.0}"
    elif damage == "no-config":
        (ck / "config.json").unlink()
    elif damage == "garbage-config":
        (ck / "config.json").write_text("{not json")
    else:
        t = load_file(str(ck / "model.safetensors"))
        save_file({**t, "stray": torch.zeros(3)}, str(ck / "model.safetensors"))
    spec = write(work / "ck.yaml", f"name: ck\nkind: native\narch: {arch}\ncheckpoint: ckpt\n")
    before = _snapshot(work / "out")
    code, _, err = call_cli(["run", str(work / "tasks" / "r-needle.yaml"), "--models", str(spec), "-d", str(work / "out")])
    assert code == 2 and needle in error_sentence(err)
    assert _snapshot(work / "out") == before  # not even a runs row


# --------------------------------------------------------------------------- stores
def test_store_from_a_newer_evalkit_is_refused_by_every_command_byte_for_byte(work: Path) -> None:
    f = work / "out" / "evalkit.sqlite"
    c = sqlite3.connect(f)
    c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(store_mod.SCHEMA_VERSION + 1),))
    c.commit()
    c.close()
    before = f.read_bytes()
    for name, argv in _commands(work, f).items():
        code, _, err = call_cli(argv)
        assert code == 2, (name, err)
        assert f"schema version {store_mod.SCHEMA_VERSION + 1}, newer than" in error_sentence(err), name
        assert f.read_bytes() == before, f"`evalkit {name}` modified a store it refused"
    assert not (work / "report.html").exists() and not (work / "export.csv").exists()
    assert not (work / "junit.xml").exists()


def _truncate(f: Path, how: str) -> None:
    data = f.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    cut = {"one-page-short": len(data) - page, "half": len(data) // 2, "header-only": 100,
           "one-byte-short": len(data) - 1}[how]
    f.write_bytes(data[:cut])


@pytest.mark.parametrize("how", ["one-page-short", "half", "header-only", "one-byte-short"])
def test_truncated_store_is_refused_by_every_command_untouched(work: Path, how: str) -> None:
    f = work / "out" / "evalkit.sqlite"
    sqlite3.connect(f).execute("PRAGMA wal_checkpoint(TRUNCATE)").connection.close()
    _truncate(f, how)
    before = f.read_bytes()
    for name, argv in _commands(work, f).items():
        code, _, err = call_cli(argv)
        assert code == 2, (name, err)
        error_sentence(err)
        assert f.read_bytes() == before, f"`evalkit {name}` wrote into a truncated store"
    assert not (work / "report.html").exists() and not (work / "junit.xml").exists()


def test_store_with_garbled_pages_is_refused_by_every_command_untouched(work: Path) -> None:
    """Pages after the schema and ``meta`` hold a byte no b-tree page can start with: the store
    opens, and the first query that meets such a page fails; every command says so in one
    sentence instead of a traceback, and writes nothing."""
    f = work / "out" / "evalkit.sqlite"
    sqlite3.connect(f).execute("PRAGMA wal_checkpoint(TRUNCATE)").connection.close()
    data = bytearray(f.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(5 * page, len(data), page):  # pages 1-5: schema, meta, runs
        data[start] = 0xFF
    f.write_bytes(bytes(data))
    for name, argv in _commands(work, f).items():
        code, _, err = call_cli(argv)
        assert code == 2, (name, err)
        error_sentence(err)
        assert f.read_bytes() == bytes(data), f"`evalkit {name}` wrote into a corrupt store"


def test_empty_store_file_is_not_a_store_for_readers_and_is_taken_over_by_the_next_run(work: Path) -> None:
    """A 0-byte evalkit.sqlite is what a run killed right after creating the file leaves."""
    f = work / "out" / "evalkit.sqlite"
    f.write_bytes(b"")
    commands = _commands(work, f)
    for name in ("report", "export", "gate", "show"):
        code, _, err = call_cli(commands[name])
        assert code == 2 and "no results store" in error_sentence(err), name
        assert f.stat().st_size == 0, f"`evalkit {name}` turned an empty file into a store"
    code, out, err = call_cli(commands["run"])
    assert code == 0 and "4 cells run" in out, err


def test_store_deleted_mid_report_gives_the_snapshot_or_a_clear_error_never_a_torn_output(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, report = work / "out", work / "leaderboard.md"
    args = ["report", "-d", str(out), "--format", "markdown", "-o", str(report)]
    assert call_cli(args)[0] == 0
    expected = report.read_text()
    report.write_text("the previous leaderboard")

    real = store_mod.Store.cells

    def cells_then_delete(self: store_mod.Store, *a: object, **k: object) -> list:
        rows = real(self, *a, **k)
        shutil.rmtree(out, ignore_errors=True)  # the whole results directory vanishes mid-report
        return rows

    monkeypatch.setattr(store_mod.Store, "cells", cells_then_delete)
    code, _, err = call_cli(args)
    if code == 0:  # the open connection still reads the deleted file: a consistent snapshot
        assert report.read_text() == expected
    else:
        assert code == 2 and error_sentence(err)
        assert report.read_text() == "the previous leaderboard"
    assert not out.exists()
    monkeypatch.setattr(store_mod.Store, "cells", real)
    code, _, err = call_cli(args)  # and once it is gone: a clear error, the old output kept
    assert code == 2 and "no results store" in error_sentence(err)
    assert report.read_text() in (expected, "the previous leaderboard")
    assert not [p for p in work.iterdir() if p.name.startswith(".leaderboard.md")]  # no temp file left


# --------------------------------------------------------------------------- trainer state
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trained")
    model = write(d / "m.yaml", "name: dbg\nkind: native\narch: {flavor: debug, attention_fraction: 1.0}\n")
    task = write(d / "n16.yaml", "task: needle\nlengths: [16]\nsamples: 4\nseed: 0\n"
                                 "params: {depth: [0.0, 1.0], key_len: 1, value_len: 1}\n")
    write(d / "recipe.yaml", f"model: {model}\ntasks: [{task}]\ntrain: {{steps: 4, batch_tokens: 128, "
                             f"eval_every: 100, eval_samples: 4, save_every: 2}}\n")
    code, _, err = call_cli(["train", "--recipe", str(d / "recipe.yaml"), "--out", str(d / "ck"), "--device", "cpu"])
    assert code == 0, err
    return d


@pytest.mark.parametrize("damage", ["empty", "truncated-head", "truncated-half", "truncated-tail", "not-torch",
                                    "missing-keys", "a-list", "other-config"])
def test_corrupt_trainer_state_is_refused_and_nothing_is_overwritten(trained: Path, tmp_path: Path, damage: str) -> None:
    d = tmp_path / "t"
    shutil.copytree(trained, d)
    for p in (d / "recipe.yaml", d / "m.yaml"):  # paths inside point at the copy
        p.write_text(p.read_text().replace(str(trained), str(d)))
    state = d / "ck" / "trainer_state.pt"
    data = state.read_bytes()
    if damage == "empty":
        state.write_bytes(b"")
    elif damage.startswith("truncated"):
        state.write_bytes(data[: {"truncated-head": 10, "truncated-half": len(data) // 2,
                                  "truncated-tail": len(data) - 10}[damage]])
    elif damage == "not-torch":
        state.write_bytes(b"\x00garbage" * 100)
    elif damage == "missing-keys":
        torch.save({"step": 2, "model": {}}, state)
    elif damage == "a-list":
        torch.save([1, 2, 3], state)
    else:  # a whole, valid state of another training config
        st = torch.load(state, weights_only=False)
        st["train_config"] = {**st["train_config"], "lr": 0.5}
        torch.save(st, state)
    before = {p.name: p.read_bytes() for p in (d / "ck").iterdir()}
    code, _, err = call_cli(["train", "--recipe", str(d / "recipe.yaml"), "--out", str(d / "ck"), "--device", "cpu",
                             "--resume"])
    assert code == 2
    sentence = error_sentence(err)
    assert str(state) in sentence
    assert {p.name: p.read_bytes() for p in (d / "ck").iterdir()} == before


def test_gate_and_export_outputs_are_not_written_on_bad_input(work: Path) -> None:
    """--junit / --markdown / -o files are written only after the inputs validated."""
    write(work / "bad-gate.yaml", "model: r-hybrid\nchecks:\n  - {task: r-needle, min_recall: 80}\n")
    code, _, err = call_cli(["gate", str(work / "bad-gate.yaml"), "-d", str(work / "out"), "--junit",
                             str(work / "j.xml"), "--markdown", str(work / "g.md")])
    assert code == 2 and "write 0.8 for 80%" in error_sentence(err)
    assert not (work / "j.xml").exists() and not (work / "g.md").exists()
