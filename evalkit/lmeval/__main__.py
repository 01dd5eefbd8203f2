"""``python -m evalkit.lmeval ARGS``: lm-eval's own command line, with evalkit's model registered.

lm-eval (0.4.x) discovers models only through its built-in registry, so ``lm_eval --model evalkit``
cannot find evalkit's ``LM`` subclass; this entry point imports it first and then hands every
argument to lm-eval unchanged, e.g.::

    python -m evalkit.lmeval run --model evalkit --model_args model=models/zoo/my_text_model \\
        --include_path lm_eval_tasks/ --tasks evalkit_needle
"""

from __future__ import annotations

import sys

from evalkit.errors import EvalkitError


def main() -> None:
    try:
        from lm_eval.__main__ import cli_evaluate

        import evalkit.lmeval.model  # noqa: F401  (registers --model evalkit)

        cli_evaluate()
    except EvalkitError as e:  # bad input inside the bridge: one sentence, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
