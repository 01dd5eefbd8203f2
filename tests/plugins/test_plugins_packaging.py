"""Third-party plugins through the `evalkit.plugins` entry-point group, and package data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_entry_point_plugin_registers_a_task(tmp_path: Path):
    """A fake installed distribution whose entry point registers a new task."""
    pkg = tmp_path / "site" / "ext_tasks"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from evalkit.tasks.base import Filler, Needle, Query, Sample, Task, register_task

        @dataclass(frozen=True)
        class P:
            depth: float = 0.5

        @register_task
        class Echo(Task):
            name = "echo_ext"
            Params = P
            axes = ("depth",)

            def sample(self, context_length, rng, index):
                k = tuple(int(x) for x in rng.integers(0, 128, 1))
                v = tuple(int(x) for x in rng.integers(0, 128, 1))
                return Sample(self.name, index, int(rng.integers(1 << 31)),
                              (Filler(self.params.depth), Needle(k, v), Filler(1 - self.params.depth), Query(k, v)))
    """))
    dist = tmp_path / "site" / "ext_tasks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-tasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[evalkit.plugins]\necho = ext_tasks\n")
    spec = tmp_path / "echo.yaml"
    spec.write_text("task: echo_ext\nlengths: [32]\nsamples: 2\nparams: {depth: [0.0, 1.0]}\n")
    code = ("from evalkit.tasks import TASKS; assert 'echo_ext' in TASKS.names(); "
            f"from evalkit.spec import load_task_spec; s = load_task_spec({str(spec)!r}); print(len(s.points()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


@pytest.mark.slow
def test_wheel_carries_builtin_specs_as_package_data(tmp_path: Path):
    """`pip install evalkit` must bring tasks/*.yaml and models/*.yaml (the repo's own files)."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("evalkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("tasks", "models"):
        for f in (REPO / kind).glob("*.yaml"):
            assert f"evalkit/_builtin/{kind}/{f.name}" in names
    assert not any(n.startswith("tests/") for n in names)
    for f in (REPO / "evalkit" / "tasks" / "data").glob("*.txt"):  # the text format's word lists
        assert f"evalkit/tasks/data/{f.name}" in names
