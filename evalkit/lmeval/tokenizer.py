"""Which tokenizer an lm-eval run uses, from the model arguments lm-eval hands to tasks and models.

lm-eval passes the parsed ``--model_args`` (merged with ``--metadata``) both to the model class and
to a task's ``custom_dataset``, as RULER's tasks rely on. The names a tokenizer can arrive under:

- ``tokenizer=PATH``: explicit, wins over everything;
- ``pretrained=PATH``: lm-eval's ``hf`` model; the checkpoint directory holds the tokenizer;
- ``model=REF``: evalkit's own ``evalkit`` model; REF is a built-in model name, a model spec or
  a native checkpoint directory, whose tokenizer is the tokenizer files in the checkpoint directory.

Everything loads from local paths (``local_files_only``): nothing is downloaded.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.errors import CheckpointError, EvalkitError

if TYPE_CHECKING:
    from evalkit.spec import ModelSpec

def has_tokenizer_files(path: str | Path) -> bool:
    """Whether a directory holds a transformers tokenizer (the rule the ``hf`` adapter uses)."""
    from evalkit.models.base import tokenizer_files

    return Path(path).is_dir() and bool(tokenizer_files(path))


def native_tokenizer_path(spec: ModelSpec) -> str | None:
    """The tokenizer a native model spec carries: the tokenizer files in its checkpoint directory
    (beside ``config.json`` and ``model.safetensors``), or None."""
    if spec.checkpoint is not None:
        ckpt = Path(spec.checkpoint)
        directory = ckpt if ckpt.is_dir() else ckpt.parent
        if has_tokenizer_files(directory):
            return str(directory)
    return None


def tokenizer_ref(model_args: dict[str, Any]) -> str:
    """The tokenizer path named by lm-eval model arguments (see the module docstring)."""
    for key in ("tokenizer", "pretrained"):
        value = model_args.get(key)
        if isinstance(value, str) and value:
            return value
    ref = model_args.get("model")
    if isinstance(ref, str) and ref:
        from evalkit.spec import load_model_spec

        spec = load_model_spec(ref)
        path = native_tokenizer_path(spec)
        if path is None:
            raise CheckpointError(no_tokenizer_message(spec))
        return path
    raise EvalkitError("evalkit tasks in lm-eval render text with the evaluated model's tokenizer, but the "
                       "model arguments name none: pass --model_args pretrained=PATH (model hf), "
                       "model=REF (model evalkit) or tokenizer=PATH")


def no_tokenizer_message(spec: ModelSpec) -> str:
    where = spec.path or spec.checkpoint or spec.name
    return (f"native model '{spec.name}' ({where}) carries no tokenizer: lm-eval feeds models text, so a "
            f"native checkpoint needs tokenizer files in its checkpoint directory (or pass tokenizer=PATH); "
            f"models trained on the synthetic 'tokens' format have no text tokenizer and can only be "
            f"evaluated with `evalkit run`")


@cache
def load_tokenizer(path: str) -> Any:
    """A transformers tokenizer from a local directory; a clear error when it is not one."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not has_tokenizer_files(p):
        raise CheckpointError(f"{p}: no tokenizer files found (tokenizer.json, tokenizer.model or vocab.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001  (transformers raises many types for a broken tokenizer directory)
        raise CheckpointError(f"{p}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    if not tok("The quick brown fox.", add_special_tokens=False)["input_ids"]:
        raise CheckpointError(f"{p}: the tokenizer encodes text to no tokens, so lengths cannot be measured")
    return tok
