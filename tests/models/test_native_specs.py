"""Model specs that use the newer mixers and layouts: shipped specs, bad input through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.models.native_adapter import NativeAdapter
from evalkit.spec import load_model_spec
from tests.conftest import write

REPO = Path(__file__).resolve().parents[2]
NEW_SPECS = {  # name: layer types
    "s4d": ["s4d"] * 4,
    "swa": ["swa"] * 4,
    "gated_deltanet": ["gated_deltanet"] * 4,
    "hybrid_s4d": ["s4d", "s4d", "attention", "s4d"],
    "hybrid_gdn": ["gated_deltanet", "gated_deltanet", "attention", "gated_deltanet"],
    "hybrid_swa": ["mamba2", "swa", "mamba2", "swa"],
}


@pytest.mark.parametrize("name", NEW_SPECS)
def test_shipped_specs_and_recipes(name):
    """Each new spec builds (random weights until its zoo checkpoint exists) and has a recipe."""
    spec = load_model_spec(name)
    cfg = NativeAdapter.config(spec)
    assert list(cfg.layer_types()) == NEW_SPECS[name]
    assert (cfg.d_model, cfg.n_layers) == (64, 4)  # the zoo's size
    if spec.checkpoint is None:
        assert NativeAdapter.random_weights(spec)
    recipe = (REPO / "experiments" / "zoo" / f"{name}.yaml").read_text()
    assert f"model: models/{name}.yaml" in recipe and f"out: models/zoo/{name}" in recipe


def _spec(tmp_path: Path, arch: str) -> Path:
    return write(tmp_path / "m.yaml", f"name: m\nkind: native\narch:\n  flavor: debug\n{arch}init_seed: 0\n")


@pytest.mark.parametrize("arch,line,needle", [
    ("  pattern: [mamba2, atention]\n", 5,
     "field 'arch.pattern': 'pattern' names an unknown mixer 'atention' at layer 1; did you mean 'attention'?"),
    ("  pattern: MMQA\n", 5, "unknown mixer letter 'Q' at character 2"),
    ("  n_layers: 4\n  pattern: MMA\n", 6, "'pattern' has 3 layers but n_layers is 4"),
    ("  attention_fraction: 1.0\n  attention: swa\n  window: 8192\n", 7,
     "'window' (8192) is larger than max_context (4096)"),
    ("  attention: full\n", 5, "'attention' must be a registered attention mixer, got 'full'"),
])
def test_bad_layout_exits_2_with_file_and_line(cli, tmp_path, tiny_task, arch, line, needle):
    path = _spec(tmp_path, arch)
    code, _, err = cli("run", str(tiny_task), "--models", str(path), "-d", str(tmp_path / "o"))
    assert code == 2, err
    assert f"{path}:{line}: " in err and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_run_with_every_new_mixer(cli, tmp_path, tiny_task):
    """A run over a pattern hybrid of all the new mixers stores their state bytes per cell."""
    import json
    import sqlite3

    path = _spec(tmp_path, "  pattern: SWGA\n  window: 32\n")
    out = tmp_path / "o"
    code, _, err = cli("run", str(tiny_task), "--models", str(path), "-d", str(out), "--no-cost")
    assert code == 0, err
    con = sqlite3.connect(out / "evalkit.sqlite")
    infos = {r[0] for r in con.execute("SELECT model_info FROM cells")}
    assert len(infos) == 1
    info = json.loads(infos.pop())
    assert info["layer_types"] == ["s4d", "swa", "gated_deltanet", "attention"]
    assert info["attention_fraction"] == 0.5 and info["window"] == 32
    assert info["kv_bytes_per_token"] == 2 * 32 * 2 and info["fixed_state_bytes"] > 31 * 2 * 32 * 2
