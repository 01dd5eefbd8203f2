"""Run one small sweep through the ``vllm`` adapter, in a process of its own (the test calls it
with ``python run_vllm.py MODEL_SPEC TASK_SPEC OUTPUT_DIR``): vLLM is imported once for both
scoring modes and its process-wide settings never reach the test session."""

from __future__ import annotations

import sys


def main(model: str, task: str, out: str) -> None:
    from evalkit import runner
    from evalkit.spec import load_model_spec, load_task_spec

    spec = load_model_spec(model)
    for scoring in ("teacher_forced", "greedy"):
        cells = runner.plan([load_task_spec(task)], [spec], scoring=scoring)
        result = runner.execute(cells, out, device="cpu", cost=scoring == "teacher_forced")
        if result.failed:
            raise SystemExit(f"failed cells: {result.failed}")


if __name__ == "__main__":
    main(*sys.argv[1:])
