"""Registries for plugins (tasks, mixers, adapters) with "did you mean" errors.

Built-in plugins register on import of their module; third parties list a module under the
entry-point group ``evalkit.plugins`` and importing it registers what it defines.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from evalkit.errors import UnknownNameError

T = TypeVar("T")

ENTRY_POINT_GROUP = "evalkit.plugins"
_plugins_loaded = False


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest valid name to ``name``, or None if nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    best = closest(name, choices)
    hint = f"; did you mean '{best}'?" if best else ""
    return f"{hint} (known: {', '.join(sorted(choices)) or 'none'})"


def load_plugins() -> None:
    """Import the built-in plugin modules and every ``evalkit.plugins`` entry point, once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import evalkit.models  # noqa: F401  (registers adapters and mixers)
    import evalkit.tasks  # noqa: F401  (registers task plugins)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


class Registry(Generic[T]):
    """A name → object map; ``register`` is a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, tuple(self._items))}"
            ) from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_string(path: str) -> object:
    """'pkg.mod:attr' → attr."""
    mod, _, attr = path.partition(":")
    obj: object = importlib.import_module(mod)
    return getattr(obj, attr) if attr else obj
