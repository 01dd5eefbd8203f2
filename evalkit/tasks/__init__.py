"""Task plugins and the formats that render their samples.

Importing this package registers the built-in tasks (``needle``, ``assoc_recall``,
``copy_number``, ``multi_query``) in ``TASKS`` and the built-in formats (``tokens``, ``text``) in
``FORMATS``.
"""

from evalkit.tasks.base import (
    TASKS,
    Filler,
    Needle,
    Query,
    Rendered,
    Sample,
    Task,
    register_task,
)
from evalkit.tasks.formats import FORMATS
from evalkit.tasks import tokens  # noqa: F401  (registers the tokens format)
from evalkit.tasks import text  # noqa: F401  (registers the text format)
from evalkit.tasks import assoc_recall, copy_number, multi_query, needle  # noqa: F401
from evalkit.tasks import ruler  # noqa: F401  (RULER's NIAH: the ruler_niah task)

__all__ = [
    "FORMATS",
    "TASKS",
    "Filler",
    "Needle",
    "Query",
    "Rendered",
    "Sample",
    "Task",
    "register_task",
]
