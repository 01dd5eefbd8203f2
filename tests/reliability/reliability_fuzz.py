"""Hypothesis strategies for the fuzz tests: YAML documents built from a schema's own field names
(so most examples get past the first check and reach the deeper ones), junk values of every YAML
type, and raw text. Examples per test: EVALKIT_FUZZ_EXAMPLES (see reliability_util)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from reliability_util import env_int

EXAMPLES = env_int("EVALKIT_FUZZ_EXAMPLES", 200)


def fuzz_settings(share: float = 1.0) -> settings:
    """CI-sized, derandomized (the same examples every run) unless EVALKIT_FUZZ_RANDOM=1."""
    return settings(max_examples=max(10, int(EXAMPLES * share)), deadline=None, database=None,
                    derandomize=os.environ.get("EVALKIT_FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


JUNK_KEYS = st.sampled_from(["", "x", "nmae", "Task", "lenghts", "params ", "0", "checks.0", "über"])
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=5000), st.sampled_from([0, 1, 2, 3, 16, 64, 128, 2**31, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, -0.1, 1e-300]),
    st.text(max_size=12), st.sampled_from(["needle", "native", "tokens", "text", "debug", "mamba2", "attention",
                                           "random", "wilson_lower", "cell", "yes", "~", "0x10", "1e3", "nan"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def mapping(fields: Sequence[str], value_for: dict[str, Any] | None = None, max_size: int = 8) -> st.SearchStrategy:
    """A dict whose keys are mostly the schema's ``fields`` (some junk), each value drawn from
    ``value_for[key]`` when given, else from any YAML value."""
    value_for = value_for or {}
    pairs = st.lists(st.one_of(st.sampled_from(list(fields)), JUNK_KEYS), max_size=max_size, unique=True)
    return pairs.flatmap(lambda keys: st.fixed_dictionaries(
        {k: st.one_of(value_for[k], VALUES) if k in value_for else VALUES for k in keys}))


def yaml_text(doc: st.SearchStrategy) -> st.SearchStrategy:
    """YAML text of a generated document, sometimes damaged (cut short, a stray character),
    sometimes replaced by raw text."""
    dumped = doc.map(lambda d: yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    damaged = st.tuples(dumped, st.integers(0, 400), st.sampled_from(["", ":", "\t", "[", "{", "- ", "'", "&a *b"])).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:])
    return st.one_of(dumped, dumped, dumped, damaged, st.text(max_size=80))


def ints_or_junk(valid: Sequence[int]) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(list(valid)), st.lists(st.sampled_from(list(valid)), max_size=3), VALUES)


class Counter:
    """Counts the examples a property test really tried, and how they ended."""

    def __init__(self) -> None:
        self.n = 0
        self.outcomes: dict[str, int] = {}

    def add(self, outcome: str) -> None:
        self.n += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def report(self, what: str) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        line = f"[reliability] fuzz {what}: {self.n} examples ({parts})"
        print("\n" + line)
        return line
