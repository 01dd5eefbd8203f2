"""Run in a fresh interpreter by test_determinism.py: print one JSON line with a digest of every
rendered sample of every built-in task spec (planned against the given model spec), then run
``evalkit run`` with the remaining arguments.

    python determinism_probe.py MODEL_SPEC [evalkit run arguments ...]
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any


def _shortest_plan(spec: Any, model: Any) -> list[Any]:
    """The cells of ``spec`` at its shortest length the model's format can render (text needs
    more tokens than the synthetic vocabulary); none when no length fits."""
    from evalkit.errors import ContextLengthError
    from evalkit.runner import plan

    for length in sorted(spec.lengths):
        try:
            return plan([spec], [model], lengths=[length], samples=3)
        except ContextLengthError:
            continue
    return []


def sample_digests(model_ref: str) -> dict[str, str]:
    """Built-in task spec name → sha256 over (cell key, input ids, answer spans) of its first
    samples at its shortest length that fits, for every sweep point."""
    from evalkit.runner import make_sample, render
    from evalkit.spec import builtin_names, load_model_spec, load_task_spec

    model = load_model_spec(model_ref)
    out = {}
    for name in builtin_names("tasks"):
        spec = load_task_spec(name)
        h = hashlib.sha256()
        for cell in _shortest_plan(spec, model):
            h.update(cell.cell_key.encode())
            for i in range(cell.n_samples):
                r = render(cell, make_sample(cell, i))
                h.update(repr((tuple(r.input_ids), tuple(r.answer_spans))).encode())
        out[name] = h.hexdigest()
    return out


def main() -> None:
    import torch

    torch.set_num_threads(1)
    print(json.dumps(sample_digests(sys.argv[1])), flush=True)
    from evalkit.cli import main as cli

    cli(sys.argv[2:])


if __name__ == "__main__":
    main()
