"""Multi-query associative recall (MQAR), as in Zoology (``zoology/data/multiquery_ar.py``).

All key → value pairs come first, back to back; the queries follow, spread over the rest of the
sequence with filler between. Where each query lands follows a placement law: Zoology's power
law (most queries soon after the pairs, a long tail further away, like repeated bigrams in real
text) or uniform.

The placement is drawn on a grid of slots, one per query-sized stretch of the query region in
the ``tokens`` format (Zoology uses 2-token slots for its 2-token queries), so the law means the
same thing at every context length. The chosen slots become the ``Filler`` shares between queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.tasks.base import Filler, Needle, Part, Query, Sample, Task, register_task

PLACEMENTS = ("power_law", "uniform")


@dataclass(frozen=True, kw_only=True)
class AssocRecallParams:
    num_pairs: int = 16  # key -> value pairs at the start of the sequence
    num_queries: int | None = None  # keys asked for (each at most once); None = num_pairs
    key_len: int = 1  # ids per key
    value_len: int = 1  # ids per value
    placement: str = "power_law"  # where queries land: "power_law" (Zoology) or "uniform"
    power_a: float = 0.01  # power-law exponent a: slot gap g drawn with p ∝ g^(a-1); 1 = uniform


@register_task
class AssocRecallTask(Task):
    """Answer many key queries about key → value pairs given at the start (Zoology's MQAR)."""

    name = "assoc_recall"
    version = 1
    Params = AssocRecallParams
    axes = ("num_pairs",)
    secondary = {"query_acc": "queries"}
    description = "Zoology MQAR: key-value pairs up front, then power-law-placed key queries."

    params: AssocRecallParams

    @property
    def num_queries(self) -> int:
        """How many queries a sample has (``num_pairs`` unless set)."""
        p = self.params
        return p.num_pairs if p.num_queries is None else p.num_queries

    def validate(self) -> None:
        p = self.params
        self.check_lengths()
        self.check_key_count("num_pairs", p.num_pairs, p.key_len)
        if p.num_queries is not None:
            self.check_range("num_queries", p.num_queries, 1, p.num_pairs, " (at most num_pairs; or null)")
        if p.placement not in PLACEMENTS:
            raise ValueError(
                f"placement must be one of {', '.join(PLACEMENTS)}, got {p.placement!r}"
            )
        if not p.power_a > 0:
            raise ValueError(f"power_a must be > 0, got {p.power_a!r}")

    def query_positions(
        self, context_length: int, rng: np.random.Generator
    ) -> list[float]:
        """Sorted positions in [0, 1) of the queries within the query region's filler.

        Distinct slots are drawn without replacement: with ``power_law``, slot ``g`` (0-based)
        has weight ``(g + 1) ** (power_a - 1)`` as in Zoology; with ``uniform`` all are equal.
        """
        p = self.params
        query_len = 2 + p.key_len + p.value_len  # <q> key <a> value
        region = context_length - 1 - p.num_pairs * (p.key_len + p.value_len)
        slots = max(self.num_queries, region // query_len)
        weights = None
        if p.placement == "power_law":
            weights = np.arange(1, slots + 1, dtype=np.float64) ** (p.power_a - 1.0)
            weights /= weights.sum()
        chosen = np.sort(rng.choice(slots, size=self.num_queries, replace=False, p=weights))
        return [float(s) / slots for s in chosen]

    def sample(self, context_length: int, rng: np.random.Generator, index: int) -> Sample:
        """The pairs, then for each query the filler since the last one and the query itself."""
        p = self.params
        seed = int(rng.integers(0, 2**63))
        keys = self.distinct_keys(rng, p.num_pairs, p.key_len)
        values = self.values(rng, p.num_pairs, p.value_len)
        # Which pairs are asked, in order of appearance (a random order, as in Zoology).
        queried = [int(i) for i in rng.choice(p.num_pairs, size=self.num_queries, replace=False)]
        positions = self.query_positions(context_length, rng)

        parts: list[Part] = [Needle(k, v) for k, v in zip(keys, values)]
        previous = 0.0
        for position, i in zip(positions, queried):
            parts += [Filler(position - previous), Query(keys[i], values[i])]
            previous = position
        parts.append(Filler(1.0 - previous))
        return Sample(
            task=self.name,
            index=index,
            seed=seed,
            parts=tuple(parts),
            meta=(
                ("num_pairs", p.num_pairs),
                ("num_queries", self.num_queries),
                ("placement", p.placement),
                ("query_positions", tuple(round(x, 4) for x in positions)),
            ),
        )
