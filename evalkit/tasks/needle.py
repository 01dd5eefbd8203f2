"""Needle in a haystack: one key → value fact at a chosen depth, queried at the end.

Optional distractors are further facts with other keys at random depths; they are never queried,
so a model must retrieve by key rather than recall "the one needle there is".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.tasks.base import KEY_SPACE, Filler, Needle, Part, Query, Sample, Task, register_task


@dataclass(frozen=True, kw_only=True)
class NeedleParams:
    depth: float = 0.5  # needle position in the haystack: 0 = start, 1 = just before the query
    key_len: int = 2  # key ids per needle
    value_len: int = 2  # value ids per needle (the answer length)
    distractors: int = 0  # extra needles with other keys at random depths, never queried


@register_task
class NeedleTask(Task):
    """Retrieve the value of the one queried key from a haystack, as a function of its depth."""

    name = "needle"
    version = 1
    Params = NeedleParams
    axes = ("depth",)
    secondary = {}
    description = "Recall one key→value needle placed at a given depth of a haystack."

    params: NeedleParams

    def validate(self) -> None:
        p = self.params
        self.check_range("depth", p.depth, 0.0, 1.0)
        self.check_lengths()
        self.check_range("distractors", p.distractors, 0, KEY_SPACE**p.key_len - 1,
                         f" (distinct keys of length {p.key_len})")

    def sample(self, context_length: int, rng: np.random.Generator, index: int) -> Sample:
        """The needle (and distractors) sorted by depth with filler between, then the query.

        Filler shares are the gaps between consecutive depths, so the needle sits after a
        ``depth`` share of the haystack. On equal depths the queried needle comes first.
        """
        p = self.params
        seed = int(rng.integers(0, 2**63))
        n = 1 + p.distractors
        keys = self.distinct_keys(rng, n, p.key_len)
        values = self.values(rng, n, p.value_len)
        depths = [float(p.depth)] + [float(d) for d in rng.random(p.distractors)]

        parts: list[Part] = []
        previous = 0.0
        for i in sorted(range(n), key=lambda i: depths[i]):
            parts += [Filler(depths[i] - previous), Needle(keys[i], values[i])]
            previous = depths[i]
        parts += [Filler(1.0 - previous), Query(keys[0], values[0])]
        return Sample(
            task=self.name,
            index=index,
            seed=seed,
            parts=tuple(parts),
            meta=(
                ("depth", float(p.depth)),
                ("distractors", p.distractors),
                ("distractor_depths", tuple(round(d, 4) for d in sorted(depths[1:]))),
            ),
        )
