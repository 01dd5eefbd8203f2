"""Formats: how a structured ``Sample`` becomes model input of an exact length.

A format is a callable ``(sample, context_length, **opts) -> Rendered`` registered in ``FORMATS``
under its name (``tokens`` in ``evalkit.tasks.tokens``; ``text`` later). Every format places the
sample's needles and queries first, then hands what is left of ``context_length`` to the
sample's ``Filler`` parts with ``split_budget``, so all formats split the haystack the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from evalkit.registry import Registry
from evalkit.tasks.base import Rendered

FormatFn = Callable[..., Rendered]  # (sample, context_length, **opts) -> Rendered

FORMATS: Registry[FormatFn] = Registry("format")


def split_budget(budget: int, shares: Sequence[float]) -> list[int]:
    """Split ``budget`` filler units among filler parts in proportion to their ``shares``.

    Deterministic largest-remainder rounding: every part gets the floor of its exact share, and
    the units left over go one each to the parts with the largest fractional parts (ties to the
    earlier part). The result always sums to ``budget``. Shares are normalised by their sum; if
    they are all zero the budget is split evenly.
    """
    if budget < 0:
        raise ValueError(f"filler budget must be >= 0, got {budget}")
    if not shares:
        raise ValueError("cannot split a filler budget among zero filler parts")
    if any(s < 0 for s in shares):
        raise ValueError(f"filler shares must be >= 0, got {list(shares)}")
    total = float(sum(shares))
    weights = [s / total for s in shares] if total > 0 else [1.0 / len(shares)] * len(shares)
    exact = [budget * w for w in weights]
    sizes = [math.floor(x) for x in exact]
    left = budget - sum(sizes)
    # Python's sort is stable, so equal fractional parts keep their order: ties go to the earlier.
    by_fraction = sorted(range(len(exact)), key=lambda i: -(exact[i] - sizes[i]))
    for i in by_fraction[:left]:
        sizes[i] += 1
    return sizes
