"""Model-spec sweeps that train (evalkit/spec.py: load_model_specs; evalkit/sweeps.py): variants
and their names, --train-missing trains each variant once and caches it, every variant's cells
carry the model columns, and bad input is refused with exit 2 before anything is written.
CPU, debug flavor, 2 training steps, length 16."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from testutil import write

from evalkit.errors import CheckpointError, SpecError
from evalkit.spec import load_model_spec, load_model_specs
from evalkit.sweeps import file_name

TASK = """\
task: needle
lengths: [16]
samples: 4
seed: 0
params: {depth: [0.0, 1.0], key_len: 1, value_len: 1}
"""

RECIPE = """\
train:
  tasks: [needle16.yaml]
  steps: 2
  batch_tokens: 64
  eval_every: 2
  eval_samples: 4
  save_every: 1
"""

SWEEP = "name: sw\nkind: native\narch: {flavor: debug, attention_fraction: [0, 0.5, 1.0]}\n" + RECIPE
NAMES = ["sw[attention_fraction=0]", "sw[attention_fraction=0.5]", "sw[attention_fraction=1.0]"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"task": write(tmp_path / "needle16.yaml", TASK), "sweep": write(tmp_path / "sw.yaml", SWEEP)}


def spec_file(tmp_path: Path, text: str, name: str = "bad.yaml") -> str:
    write(tmp_path / "needle16.yaml", TASK)
    return str(write(tmp_path / name, text))


# --------------------------------------------------------------------------- variants and names
def test_a_list_sweeps_its_field_and_names_each_variant(files):
    variants = load_model_specs(str(files["sweep"]))
    assert [v.name for v in variants] == NAMES
    assert [dict(v.arch)["attention_fraction"] for v in variants] == [0, 0.5, 1.0]
    assert [v.sweep for v in variants] == [(("attention_fraction", x),) for x in (0, 0.5, 1.0)]
    assert all(v.trains and v.checkpoint is None and dict(v.train)["steps"] == 2 for v in variants)
    assert variants[0].train_tasks == (str(files["task"].resolve()),)


def test_several_lists_sweep_their_product_in_spec_order(tmp_path):
    path = spec_file(tmp_path, "name: p\narch: {flavor: debug, d_state: [8, 16], attention_fraction: [0, 1.0]}\n")
    names = [v.name for v in load_model_specs(path)]
    assert names == ["p[d_state=8,attention_fraction=0]", "p[d_state=8,attention_fraction=1.0]",
                     "p[d_state=16,attention_fraction=0]", "p[d_state=16,attention_fraction=1.0]"]


def test_list_valued_fields_stay_one_value_and_sweep_as_lists_of_lists(tmp_path):
    one = load_model_specs(spec_file(tmp_path, "name: q\narch: {flavor: debug, pattern: [mamba2, attention]}\n"))
    assert [v.name for v in one] == ["q"] and dict(one[0].arch)["pattern"] == ["mamba2", "attention"]
    idx = load_model_specs(spec_file(tmp_path, "name: q\narch: {flavor: debug, attn_layer_idx: [1]}\n", "i.yaml"))
    assert [v.name for v in idx] == ["q"]
    swept = load_model_specs(spec_file(tmp_path, "name: q\narch: {flavor: debug, n_layers: 4, "
                                                 "attn_layer_idx: [[1], [1, 3]]}\n", "ii.yaml"))
    assert [v.name for v in swept] == ["q[attn_layer_idx=[1]]", "q[attn_layer_idx=[1,3]]"]
    letters = load_model_specs(spec_file(tmp_path, "name: q\narch: {flavor: debug, pattern: [MA, AM]}\n", "l.yaml"))
    assert [v.name for v in letters] == ["q[pattern=MA]", "q[pattern=AM]"]


def test_existing_specs_keep_their_names_and_cell_keys(tmp_path):
    """Keys computed before sweeps existed (evalkit at d459665): a spec without lists is the
    same model with the same cell keys."""
    from evalkit.runner import plan
    from evalkit.spec import builtin_names, load_task_spec

    path = spec_file(tmp_path, "name: dbg\nkind: native\narch: {flavor: debug, attention_fraction: 0.5}\ninit_seed: 1\n")
    (spec,) = load_model_specs(path)
    assert spec == load_model_spec(path) and spec.name == "dbg" and spec.sweep == ()
    cell = plan([load_task_spec("needle")], [spec], lengths=[64])[0]
    assert (cell.model_id, cell.cell_key) == ("a79c4d268f69b723", "bf6aaae8186a699bb000165b")
    assert "sweep" not in spec.to_dict() and "train" not in spec.to_dict()
    for name in builtin_names("models"):
        (m,) = load_model_specs(name)
        assert m.name == name and not m.trains


def test_commands_about_one_model_refuse_a_sweep(files, cli):
    with pytest.raises(SpecError, match=r"sweeps attention_fraction \(3 variants"):
        load_model_spec(str(files["sweep"]))
    code, _, err = cli("cost", str(files["sweep"]), "--lengths", "16")
    assert code == 2 and "this command takes one model" in err


# --------------------------------------------------------------------------- --train-missing
def _logs(root: Path) -> dict[str, str]:
    return {d.name: (d / "train_log.jsonl").read_text() for d in sorted(root.iterdir())}


def test_train_missing_trains_each_variant_once_then_evaluates_all(files, tmp_path, cli):
    out, ck = tmp_path / "runs", tmp_path / "ck"
    args = ("run", str(files["task"]), "--models", str(files["sweep"]), "-d", str(out), "--no-cost",
            "--device", "cpu", "--checkpoint-dir", str(ck))
    code, _, err = cli(*args)  # no checkpoints, no --train-missing: refused before anything is written
    assert code == 2 and "pass --train-missing" in err and "sw[attention_fraction=0]" in err
    assert not out.exists() and not ck.exists()

    code, stdout, err = cli(*args, "--train-missing")
    assert code == 0, err
    assert err.count("training (2 steps on needle16)") == 3
    logs = _logs(ck)
    assert {d.rsplit("-", 1)[0] for d in logs} == {file_name(n) for n in NAMES}  # NAME-<recipe hash>
    assert all(json.loads(t.splitlines()[-1])["event"] == "end" for t in logs.values())

    con = sqlite3.connect(out / "evalkit.sqlite")
    rows = con.execute("SELECT model, random_weights, model_info FROM cells WHERE status='complete'").fetchall()
    assert {r[0] for r in rows} == set(NAMES) and len(rows) == 3 * 2 and not any(r[1] for r in rows)
    info = {r[0]: json.loads(r[2]) for r in rows}
    assert [info[n]["attn_layer_idx"] for n in NAMES] == [[], [1], [0, 1]]
    con.close()

    code, stdout, err = cli(*args)  # a second run trains nothing and reuses every cell
    assert code == 0, err
    assert "training" not in err and err.count("trained checkpoint found") == 3
    assert _logs(ck) == logs
    assert "0 cells run, 6 reused" in stdout

    # the Python API: the same cache, a fresh store; record columns for every variant
    import evalkit

    df = evalkit.run(str(files["task"]), str(files["sweep"]), output_dir=tmp_path / "api", device="cpu",
                     checkpoint_dir=ck)
    assert _logs(ck) == logs
    assert set(df["model"].unique()) == set(NAMES) and len(df) == 3 * 2 * 4
    by = df.groupby("model").first()
    assert list(by.loc[NAMES, "attention_fraction"]) == [0.0, 0.5, 1.0]
    assert list(by.loc[NAMES, "attn_layer_idx"]) == [(), (1,), (0, 1)]
    assert by.loc[NAMES[0], "fixed_state_bytes"] > 0 and by.loc[NAMES[2], "fixed_state_bytes"] == 0
    assert by.loc[NAMES[2], "kv_bytes_per_token"] > 0 and (by["d_state"] == 8).all()

    # a cached checkpoint whose config is not its variant's: refused, nothing stored
    cfg_path = next(d for d in ck.iterdir() if "=0.5" in d.name) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "rope_theta": 500.0}))
    before = (out / "evalkit.sqlite").stat().st_mtime_ns
    code, _, err = cli(*args)
    assert code == 2 and "does not match its spec" in err and "rope_theta" in err
    assert (out / "evalkit.sqlite").stat().st_mtime_ns == before


def test_an_interrupted_training_resumes(files, tmp_path):
    from evalkit.spec import load_task_spec
    from evalkit.sweeps import prepare_models, variant_dir
    from evalkit.train import make_config, read_log, train

    spec = load_model_specs(str(files["sweep"]))[1]
    out = variant_dir(spec, tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        train(spec, [load_task_spec(str(files["task"]))], make_config(dict(spec.train)), out, device="cpu",
              stop_after=1)
    lines: list[str] = []
    done = prepare_models([spec], tmp_path, checkpoint_dir=tmp_path / "ck", train_missing=True, device="cpu",
                          log=lines.append)
    assert done.trained == [spec.name] and done.models[0].checkpoint == str(out.resolve())
    assert lines[0].startswith(f"{spec.name}: resuming")
    events = [r["event"] for r in read_log(out / "train_log.jsonl")]
    assert events[0] == "start" and "resume" in events and events[-1] == "end"


def test_dry_run_lists_untrained_variants_and_trains_nothing(files, tmp_path, cli):
    code, stdout, err = cli("run", str(files["task"]), "--models", str(files["sweep"]), "-d", str(tmp_path / "r"),
                            "--dry-run")
    assert code == 0 and "3 variant(s) not trained yet" in err and "6 planned cells" in stdout
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_prepare_refuses_without_train_missing(files, tmp_path):
    from evalkit.sweeps import prepare_models

    with pytest.raises(CheckpointError, match="no trained checkpoint"):
        prepare_models(load_model_specs(str(files["sweep"])), tmp_path)


# --------------------------------------------------------------------------- bad input
BAD = {
    "unknown sweep field": (
        "name: b\narch:\n  flavor: debug\n  attention_fracton: [0, 0.5]\n",
        r"bad\.yaml:4: field 'arch\.attention_fracton': cannot sweep it: .*did you mean 'attention_fraction'"),
    "empty value list": (
        "name: b\narch:\n  flavor: debug\n  d_state: []\n",
        r"bad\.yaml:4: field 'arch\.d_state': empty list of values to sweep"),
    "variants that collide": (
        "name: b\narch:\n  flavor: debug\n  n_layers: 4\n  attention_fraction:\n    - 0.25\n    - 0.3\n",
        (r"bad\.yaml:7: field 'arch\.attention_fraction\.1': variants 'b\[attention_fraction=0\.25\]' and "
         r"'b\[attention_fraction=0\.3\]' resolve to the same model \(attention layers \[2\] of 4\)")),
    "a value out of range": (
        "name: b\narch:\n  flavor: debug\n  attention_fraction: [0, 1.5]\n",
        r"bad\.yaml:4: field 'arch\.attention_fraction\.1': attention_fraction must be in \[0, 1\], got 1\.5"),
    "one checkpoint for a sweep": (
        "name: b\narch: {flavor: debug, d_state: [8, 16]}\ncheckpoint: needle16.yaml\n",
        r"bad\.yaml:3: field 'checkpoint': one checkpoint cannot hold the 2 architectures"),
    "unknown train field": (
        "name: b\narch: {flavor: debug}\ntrain:\n  tasks: [needle16.yaml]\n  stepz: 3\n",
        r"bad\.yaml:5: field 'train\.stepz': unknown field; did you mean 'steps'\?"),
    "train value of the wrong type": (
        "name: b\narch: {flavor: debug}\ntrain:\n  tasks: [needle16.yaml]\n  lr: fast\n",
        r"bad\.yaml:5: field 'train\.lr': 'lr' must be float, got 'fast'"),
    "train value out of range": (
        "name: b\narch: {flavor: debug}\ntrain:\n  tasks: [needle16.yaml]\n  steps: 0\n",
        r"bad\.yaml:5: field 'train\.steps': --steps must be >= 1"),
    "a missing training task": (
        "name: b\narch: {flavor: debug}\ntrain:\n  tasks: [needle16.yaml, nope.yaml]\n",
        r"bad\.yaml:4: field 'train\.tasks\.1': task spec '.*nope\.yaml' does not exist"),
    "task weights that do not fit the tasks": (
        "name: b\narch: {flavor: debug}\ntrain:\n  tasks: [needle16.yaml]\n  task_weights: [1, 2]\n",
        r"bad\.yaml:5: field 'train\.task_weights': task_weights needs 1 non-negative weights"),
}


@pytest.mark.parametrize("case", list(BAD), ids=lambda c: c.replace(" ", "-"))
def test_bad_sweep_specs_exit_2_naming_file_line_and_field(case, tmp_path, cli):
    text, pattern = BAD[case]
    path = spec_file(tmp_path, text)
    out = tmp_path / "runs"
    code, _, err = cli("run", str(tmp_path / "needle16.yaml"), "--models", path, "-d", str(out), "--train-missing")
    assert code == 2, err
    assert re.search(pattern, err), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
