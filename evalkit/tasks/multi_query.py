"""Multi-needle, multi-query retrieval (RULER's multi-key / multi-query analogue).

Several key → value needles at random depths of one haystack; at the end a few of them are asked
for, in random order. More needles means more to keep; more queries means more to get right at
once (the primary metric needs every answer right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.tasks.base import Filler, Needle, Part, Query, Sample, Task, register_task


@dataclass(frozen=True, kw_only=True)
class MultiQueryParams:
    num_needles: int = 4  # needles (distinct keys) hidden in the haystack
    num_queries: int = 2  # how many of them are asked for at the end (<= num_needles)
    key_len: int = 2  # key ids per needle
    value_len: int = 2  # value ids per needle (each answer's length)


@register_task
class MultiQueryTask(Task):
    """Retrieve ``num_queries`` of ``num_needles`` needles scattered through a haystack."""

    name = "multi_query"
    version = 1
    Params = MultiQueryParams
    axes = ("num_needles", "num_queries")
    secondary = {"query_acc": "queries"}
    description = "Recall several of many key→value needles scattered at random depths."

    params: MultiQueryParams

    def validate(self) -> None:
        p = self.params
        self.check_lengths()
        self.check_key_count("num_needles", p.num_needles, p.key_len)
        self.check_range("num_queries", p.num_queries, 1, p.num_needles, " (at most num_needles)")

    def sample(self, context_length: int, rng: np.random.Generator, index: int) -> Sample:
        """Needles at sorted uniform depths with filler between, then the queries back to back."""
        p = self.params
        seed = int(rng.integers(0, 2**63))
        keys = self.distinct_keys(rng, p.num_needles, p.key_len)
        values = self.values(rng, p.num_needles, p.value_len)
        depths = [float(d) for d in np.sort(rng.random(p.num_needles))]
        # Distinct needles in random order; index i is the i-th needle in the haystack.
        queried = [int(i) for i in rng.choice(p.num_needles, size=p.num_queries, replace=False)]

        parts: list[Part] = []
        previous = 0.0
        for depth, key, value in zip(depths, keys, values):
            parts += [Filler(depth - previous), Needle(key, value)]
            previous = depth
        parts.append(Filler(1.0 - previous))
        parts += [Query(keys[i], values[i]) for i in queried]
        return Sample(
            task=self.name,
            index=index,
            seed=seed,
            parts=tuple(parts),
            meta=(
                ("num_needles", p.num_needles),
                ("num_queries", p.num_queries),
                ("depths", tuple(round(d, 4) for d in depths)),
                ("queried", tuple(queried)),
            ),
        )
