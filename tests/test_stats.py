import math

import pytest

from evalkit.stats import bootstrap, wilson


def test_wilson_known_values():
    # Reference values (Wilson 1927 / statsmodels proportion_confint(method="wilson"))
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_contains_point_estimate_and_shrinks_with_n():
    for k, n in [(1, 3), (5, 9), (50, 100)] + [(n, n) for n in range(1, 200)] + [(0, n) for n in range(1, 200)]:
        lo, hi = wilson(k, n)
        assert lo <= k / n <= hi
    assert (wilson(500, 1000)[1] - wilson(500, 1000)[0]) < (wilson(5, 10)[1] - wilson(5, 10)[0])


def test_bootstrap_is_seeded_and_brackets_mean():
    vals = [0.0, 0.5, 1.0, 1.0, 0.25, 0.75] * 5
    a, b = bootstrap(vals, seed=1), bootstrap(vals, seed=1)
    assert a == b
    mean = sum(vals) / len(vals)
    assert a[0] < mean < a[1]
    assert bootstrap([1.0] * 10) == (1.0, 1.0)
    assert not math.isnan(bootstrap([0.3])[0])
