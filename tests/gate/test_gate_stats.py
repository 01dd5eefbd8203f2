"""The gate's statistics: exact McNemar p values and the Holm adjustment, against known values."""

from __future__ import annotations

import math

import pytest

from evalkit.stats import holm, mcnemar_exact


@pytest.mark.parametrize("b,c,p", [
    (0, 10, 0.001953125),        # 2 · 1/2^10
    (10, 0, 0.001953125),        # symmetric
    (3, 5, 0.7265625),           # 2 · (1+8+28+56)/256
    (0, 0, 1.0),                 # no discordant pair: no evidence
    (5, 5, 1.0),                 # capped at 1
    (1, 0, 1.0),
    (0, 5, 0.0625),              # 2/32
    (2, 12, 2 * (1 + 14 + 91) / 2**14),
])
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_matches_binomial_sum_for_large_counts():
    # 100 paired samples, 40 flips one way and 0 the other: p = 2 / 2^40
    assert mcnemar_exact(40, 0) == pytest.approx(2.0 ** -39, rel=1e-12)
    b, c = 130, 170  # big n: integer arithmetic stays exact
    ref = min(1.0, 2 * sum(math.comb(300, i) for i in range(131)) / 2**300)
    assert mcnemar_exact(b, c) == ref and 0.02 < ref < 0.03


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_holm_known_case():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_holm_is_at_least_raw_and_at_most_bonferroni():
    ps = [0.001, 0.02, 0.02, 0.3, 0.04, 0.7]
    adj = holm(ps)
    for p, a in zip(ps, adj):
        assert p <= a <= min(1.0, len(ps) * p)
