"""Intervals for recall numbers.

Primary metrics are yes/no per sample → Wilson score interval (good coverage at small n and at
0 % / 100 %, unlike the normal approximation). Secondary metrics are per-sample fractions →
percentile bootstrap over samples, seeded so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always contains p; clamp so float rounding at p = 0 or 1 cannot say otherwise
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def bootstrap(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- the gate's regression test
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p value for paired yes/no outcomes.

    ``b`` = pairs right before and wrong after, ``c`` = the reverse; pairs that agree carry no
    information about a change. Under "no change" each discordant pair is a fair coin, so
    p = min(1, 2·P(X ≤ min(b, c))) for X ~ Bin(b + c, 1/2); p = 1 when b + c = 0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integer ratio, correctly rounded


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p values (same order as given): reject where adjusted p < α
    controls the family-wise error rate at α over all the tests, under any dependence."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
