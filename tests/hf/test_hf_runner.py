"""Runner pieces the text format and big HF models need: over-length samples counted as skipped,
and a batch that runs out of CUDA memory is halved instead of failing the cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from evalkit import runner
from evalkit.tasks.base import OverLengthError


def test_skipped_samples_are_counted_not_scored(hf_checkpoints: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.spec import load_model_spec, load_task_spec
    from evalkit.store import Store

    spec = tmp_path / "n.yaml"
    spec.write_text("task: needle\nlengths: [200]\nsamples: 4\ntext: {overlength: skip}\nparams: {depth: [0.5]}\n")
    cells = runner.plan([load_task_spec(spec)], [load_model_spec(f"hf:{hf_checkpoints['llama']}")])
    real = runner.render

    def render(cell: Any, sample: Any) -> Any:
        if sample.index == 1:
            raise OverLengthError("sample 1 is too long")
        return real(cell, sample)

    monkeypatch.setattr(runner, "render", render)
    result = runner.execute(cells, tmp_path / "runs", device="cpu", cost=False)
    assert not result.failed
    store = Store.open_dir(tmp_path / "runs")
    (cell,) = store.cells()
    assert cell["n_skipped"] == 1 and [r["idx"] for r in store.records(cell["cell_key"])] == [0, 2, 3]
    store.close()


def test_out_of_memory_halves_the_batch() -> None:
    calls: list[int] = []

    def predict(adapter: Any, batch: Any) -> list[int]:
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(batch)

    sizing = {"bs": 7}
    assert runner.predict_with_backoff(predict, None, list(range(7)), sizing) == list(range(7))
    assert sizing["bs"] == 2 and calls == [7, 4, 2, 2, 3, 2, 1]

    def broken(adapter: Any, batch: Any) -> list[int]:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # not an OOM: no retry
        runner.predict_with_backoff(broken, None, [1, 2], {"bs": 2})

    def single(adapter: Any, batch: Any) -> list[int]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):  # one sample that does not fit fails the cell
        runner.predict_with_backoff(single, None, [1], {"bs": 1})
