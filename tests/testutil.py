"""Helpers shared by test modules. (Not in conftest.py: several test folders have their own
conftest.py, and ``from conftest import ...`` would pick whichever was imported last.)"""

from __future__ import annotations

from pathlib import Path


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (creating parent folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
