"""Shared fixtures: tiny model specs (debug flavor) and an in-process CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# Without a GPU, Triton kernels run under its interpreter. Set this before anything can import
# triton: triton decides interpreted vs compiled when a kernel is decorated, and some torch
# modules import triton themselves (torch.nn.attention.bias does), so a test module that only
# sets it before its own imports is at the mercy of collection order.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


from testutil import write  # noqa: E402,F401  (re-exported for fixtures below)


@pytest.fixture
def tiny_models(tmp_path: Path) -> dict[str, Path]:
    """Debug-flavor specs for each architecture family (random weights)."""
    out = {}
    for name, arch in {
        "t-attn": "{flavor: debug, attention_fraction: 1.0}",
        "t-mamba": "{flavor: debug, ssm: mamba}",
        "t-mamba2": "{flavor: debug, ssm: mamba2}",
        "t-hybrid": "{flavor: debug, ssm: mamba2, attention_fraction: 0.5}",
    }.items():
        out[name] = write(tmp_path / "models" / f"{name}.yaml", f"name: {name}\nkind: native\narch: {arch}\ninit_seed: 1\n")
    return out


@pytest.fixture
def tiny_task(tmp_path: Path) -> Path:
    return write(tmp_path / "tasks" / "tiny_needle.yaml", """\
task: needle
lengths: [64, 128]
samples: 4
seed: 3
params:
  depth: [0.0, 1.0]
""")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from evalkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
