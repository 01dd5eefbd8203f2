"""Gate files are validated strictly: each mistake → one sentence naming file:line:field, exit 2."""

from __future__ import annotations

import pytest

from testutil import write
from evalkit.errors import SpecError
from evalkit.gate import load_gate

GOOD = """\
model: hybrid
store: runs/candidate
baseline: {store: runs/baseline, model: hybrid-prev}
alpha: 0.01
tolerance: 0.05
checks:
  - task: needle
    lengths: [1024, 256]
    min_recall: 0.8
  - task: needle
    min_effective_length: 1024
    threshold: 0.6
    bound: point
  - task: needle
    no_regression: true
    unit: length
"""


def test_good_gate_file_loads_with_defaults(tmp_path):
    g = load_gate(write(tmp_path / "g.yaml", GOOD))
    assert (g.model, g.store, g.baseline_store, g.baseline_model, g.alpha) == (
        "hybrid", "runs/candidate", "runs/baseline", "hybrid-prev", 0.01)
    a, b, c = g.checks
    assert (a.kind, a.lengths, a.min_recall, a.bound) == ("min_recall", (256, 1024), 0.8, "wilson_lower")
    assert (b.kind, b.min_effective_length, b.threshold, b.bound) == ("min_effective_length", 1024, 0.6, "point")
    assert (c.kind, c.tolerance, c.unit, c.lengths) == ("no_regression", 0.05, "length", None)


def test_example_gate_file_in_repo_loads():
    from pathlib import Path

    g = load_gate(Path(__file__).parents[2] / "experiments" / "gate_example.yaml")
    assert g.checks and {c.kind for c in g.checks} == {"min_recall", "min_effective_length", "no_regression"}


@pytest.mark.parametrize("text,where,needle", [
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recal: 0.8\n", ":4: field 'checks.0.min_recal'", "did you mean 'min_recall'"),
    ("model: hybrid\ntolerence: 0.1\nchecks: [{task: needle, min_recall: 0.5}]\n", ":2: field 'tolerence'", "did you mean 'tolerance'"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recall: 1.7\n", ":4: field 'checks.0.min_recall'", "between 0 and 1, got 1.7"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recall: high\n", ":4: field 'checks.0.min_recall'", "as a number between 0 and 1, got 'high'"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recall: 80\n", ":4: field 'checks.0.min_recall'", "write 0.8 for 80%"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recall: true\n", ":4: field 'checks.0.min_recall'", "got True"),
    ("model: hybrid\nalpha: 0\nchecks: [{task: needle, min_recall: 0.5}]\n", ":2: field 'alpha'", "strictly between 0 and 1"),
    ("model: hybrid\nbound: wilson\nchecks: [{task: needle, min_recall: 0.5}]\n", ":2: field 'bound'", "did you mean 'wilson_lower'"),
    ("model: hybrid\nchecks:\n  - task: needle\n    lengths: [256, -4]\n    min_recall: 0.5\n", ":4: field 'checks.0.lengths.1'", "positive integer"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_effective_length: 1e3\n", ":4: field 'checks.0.min_effective_length'", "positive integer"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recall: 0.5\n    no_regression: true\n", ":3: field 'checks.0'", "exactly one of"),
    ("model: hybrid\nchecks:\n  - task: needle\n", ":3: field 'checks.0'", "got none"),
    ("model: hybrid\nchecks:\n  - task: needle\n    min_recall: 0.5\n    threshold: 0.3\n", ":5: field 'checks.0.threshold'", "applies only to min_effective_length"),
    ("model: hybrid\nchecks:\n  - task: needle\n    no_regression: true\n", ":4: field 'checks.0.no_regression'", "needs a baseline"),
    ("model: hybrid\nbaseline: {model: x}\nchecks:\n  - task: needle\n    no_regression: yes please\n", ":5: field 'checks.0.no_regression'", "expected true"),
    ("model: hybrid\nbaseline: {modle: x}\nchecks: [{task: needle, no_regression: true}]\n", ":2: field 'baseline.modle'", "did you mean 'model'"),
    ("model: hybrid\nchecks: []\n", ":2: field 'checks'", "non-empty list"),
    ("store: runs\nchecks: [{task: needle, min_recall: 0.5}]\n", ":1", "missing required field 'model'"),
    ("model: hybrid\nchecks:\n  - min_recall: 0.5\n", ":3: field 'checks.0'", "missing required field 'task'"),
    ("model: [hybrid\n", ":2", "malformed YAML"),
])
def test_malformed_gate_file(tmp_path, cli, text, where, needle):
    path = write(tmp_path / "gate.yaml", text)
    with pytest.raises(SpecError) as e:
        load_gate(path)
    assert f"{path}{where}" in str(e.value) and needle in str(e.value), str(e.value)
    code, out, err = cli("gate", str(path), "--output-dir", str(tmp_path / "nowhere"))
    assert code == 2 and needle in err and "Traceback" not in err and "PASS" not in out


def test_missing_gate_file_exits_2(cli, tmp_path):
    code, _, err = cli("gate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err and "cannot read" in err
