"""The reliability suite covers every adapter and format that registers: a new one fails here
until it has a tiny offline model in ``reliability_util.TINY_MODELS`` (or a stated reason in
``NOT_COVERED``)."""

from __future__ import annotations

from reliability_util import NOT_COVERED, TINY_MODELS

from evalkit.models import ADAPTERS
from evalkit.tasks import FORMATS


def _shipped_adapters() -> set[str]:
    """Adapters that evalkit itself ships (test-only plugins registered by other test modules in the
    same pytest process, e.g. tests/executors' slowed-down adapter, are not the suite's business)."""
    return {n for n in ADAPTERS.names() if ADAPTERS.get(n).__module__.startswith("evalkit.")}


def test_every_adapter_has_a_tiny_model() -> None:
    missing = sorted(_shipped_adapters() - set(TINY_MODELS) - set(NOT_COVERED))
    assert not missing, (f"adapters {missing} have no tiny model in tests/reliability/reliability_util.py "
                         "TINY_MODELS: add one so the crash and determinism tests cover them (or say in "
                         "NOT_COVERED why they cannot)")
    assert not set(TINY_MODELS) & set(NOT_COVERED)


def test_every_format_is_some_tiny_models_default() -> None:
    covered = {ADAPTERS.get(kind).formats[0] for kind in TINY_MODELS}
    assert set(FORMATS.names()) <= covered, f"formats {sorted(set(FORMATS.names()) - covered)} are not exercised"
