"""Copy a long number: a string of digits somewhere in the haystack, asked back at the end.

No key: the model must carry every digit across the haystack, which stresses a fixed-size state
far more than retrieving a short value does (the "copy" failure of state-space models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.tasks.base import Filler, Needle, Query, Sample, Task, register_task


@dataclass(frozen=True, kw_only=True)
class CopyNumberParams:
    digits: int = 20  # how many digits the number has (the first may be 0)
    position: float = 0.0  # where in the haystack the number sits: 0 = start, 1 = end


@register_task
class CopyNumberTask(Task):
    """Reproduce a ``digits``-digit number seen earlier in the context."""

    name = "copy_number"
    version = 1
    Params = CopyNumberParams
    axes = ("digits",)
    secondary = {"digit_acc": "tokens"}
    description = "Copy back a long number of random digits placed in a haystack."

    params: CopyNumberParams

    def validate(self) -> None:
        p = self.params
        self.check_range("digits", p.digits, 1)
        self.check_range("position", p.position, 0.0, 1.0)

    def sample(self, context_length: int, rng: np.random.Generator, index: int) -> Sample:
        """Filler, the number, the rest of the filler, then the copy query."""
        p = self.params
        seed = int(rng.integers(0, 2**63))
        number = tuple(int(d) for d in rng.integers(0, 10, size=p.digits))
        parts = (
            Filler(float(p.position)),
            Needle(key=(), value=number, space="digit"),
            Filler(1.0 - float(p.position)),
            Query(key=(), answer=number, space="digit"),
        )
        return Sample(
            task=self.name,
            index=index,
            seed=seed,
            parts=parts,
            meta=(
                ("digits", p.digits),
                ("position", float(p.position)),
                ("number", "".join(str(d) for d in number)),
            ),
        )
