"""The lm-evaluation-harness bridge, both ways (needs the ``lm-eval`` extra).

- ``evalkit.lmeval.tasks``: evalkit's task specs as lm-eval tasks. ``evalkit export --format
  lm-eval DIR`` writes task YAMLs whose ``custom_dataset`` calls back into evalkit's generators
  and formats with the evaluated model's own tokenizer, so
  ``lm_eval --include_path DIR --tasks evalkit_needle --model hf --model_args pretrained=PATH``
  runs evalkit's samples inside lm-eval.
- ``evalkit.lmeval.model``: evalkit's native models as an lm-eval ``LM`` registered under the
  name ``evalkit`` (for native checkpoints that carry a tokenizer). lm-eval has no plugin
  entry point for models, so run it through ``python -m evalkit.lmeval`` (lm-eval's own command
  line with the model registered), or import ``evalkit.lmeval.model`` before
  ``lm_eval.simple_evaluate(model="evalkit", ...)``.

Nothing here is imported by ``import evalkit``; ``lm_eval`` is imported only inside this package.
"""

from __future__ import annotations

from evalkit.errors import EvalkitError


class LmEvalMissingError(EvalkitError):
    """The ``lm-eval`` extra is not installed."""


def require_lm_eval() -> None:
    """Raise a clear error (exit code 2) when lm-eval cannot be imported."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LmEvalMissingError(
            "the lm-eval bridge needs lm-evaluation-harness: pip install 'evalkit[lm-eval]'") from None
