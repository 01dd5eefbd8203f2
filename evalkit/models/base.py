"""What an adapter is: one interface in front of any model (native, HF, vLLM).

The runner only ever talks to this interface. Identity and limits are class methods of the
*spec*, so planning (``--dry-run``, cell keys, length checks) never loads weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from evalkit.registry import Registry

if TYPE_CHECKING:
    import torch

    from evalkit.spec import ModelSpec


class Adapter:
    """Base class; subclasses register with ``@register_adapter``."""

    kind: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]  # formats this adapter can take, default first
    # arch fields whose one value is a list: in a model spec, a list of lists sweeps them (spec.py)
    list_fields: ClassVar[tuple[str, ...]] = ()

    # --- from the spec alone ----------------------------------------------------------------
    @classmethod
    def validate_arch(cls, arch: dict[str, Any]) -> None:
        """Raise ValueError naming the field when ``arch`` is not a valid config."""

    @classmethod
    def identity(cls, spec: ModelSpec) -> str:
        """Stable hash of everything that changes the model's outputs (config and weights)."""
        raise NotImplementedError

    @classmethod
    def max_context(cls, spec: ModelSpec) -> int | None:
        """Longest sequence the model accepts, or None when unknown."""
        return None

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Cheap pre-flight check of a spec's checkpoint (files present, tensor names and shapes),
        run at planning time so a corrupt checkpoint fails before anything is stored. Raises
        ``CheckpointError``."""

    @classmethod
    def random_weights(cls, spec: ModelSpec) -> bool:
        return spec.checkpoint is None

    option_table: ClassVar[dict[str, Any]] = {}  # option name → tuple of choices, or the value's type

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> None:
        """Raise ValueError naming the option when a spec's ``options:`` are not valid for this
        adapter: unknown names (with the closest valid one), a value outside its choices, or of
        the wrong type (``check_option_type``)."""
        from evalkit.registry import did_you_mean

        for k, v in options.items():
            if not cls.option_table:
                raise ValueError(f"adapter '{cls.kind}' takes no options, got '{k}'")
            if k not in cls.option_table:
                raise ValueError(f"unknown {cls.kind} option '{k}'{did_you_mean(str(k), tuple(cls.option_table))}")
            want = cls.option_table[k]
            if isinstance(want, tuple):
                if v not in want:
                    raise ValueError(f"option '{k}' must be one of {', '.join(want)}, got {v!r}")
            else:
                cls.check_option_type(k, v, want)

    @classmethod
    def check_option_type(cls, k: str, v: Any, want: type) -> None:
        if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
            raise ValueError(f"option '{k}' must be a {want.__name__}, got {v!r}")

    # --- formats and tokenizers (from the spec alone) -----------------------------------------
    @classmethod
    def accepted_formats(cls, spec: ModelSpec) -> tuple[str, ...]:
        """Formats this model can take; the default format comes first."""
        return cls.formats

    @classmethod
    def default_format(cls, spec: ModelSpec) -> str:
        """The format a task spec without ``format:`` gets: ``text`` when the model has a
        tokenizer and takes text, else its first accepted format (``tokens`` for native)."""
        accepted = cls.accepted_formats(spec)
        if "text" in accepted and cls.tokenizer_identity(spec) is not None:
            return "text"
        return accepted[0]

    @classmethod
    def tokenizer_identity(cls, spec: ModelSpec) -> str | None:
        """Hash of the model's tokenizer files (part of the sample key of text cells), or None
        when the model has no tokenizer."""
        return None

    @classmethod
    def load_tokenizer(cls, spec: ModelSpec) -> Any:
        """The model's tokenizer (a transformers tokenizer, cached), or None."""
        return None

    @classmethod
    def render_options(cls, spec: ModelSpec) -> dict[str, Any]:
        """Options of the model that change how text is rendered (e.g. the chat template);
        they go into the sample key of text cells."""
        return {}

    # --- a loaded model ----------------------------------------------------------------------
    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.device = device

    def describe(self) -> dict[str, Any]:
        """Parameters, layer types, attention fraction, KV bytes per token, fixed state bytes."""
        raise NotImplementedError

    def predict(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced argmax: input_ids (B, L), positions (B, P) → next-token ids (B, P)
        predicted from the logits at each position."""
        raise NotImplementedError

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation: input_ids (B, L) → new token ids (B, max_new_tokens)."""
        raise NotImplementedError


ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    return ADAPTERS.register(cls.kind)(cls)


_FILE_HASHES: dict[tuple[str, int, int], str] = {}

# files that make up a transformers tokenizer (any of the first three means there is one)
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
TOKENIZER_FILES = (*TOKENIZER_VOCAB_FILES, "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The tokenizer files present in a checkpoint directory; empty when it has no tokenizer."""
    d = Path(directory)
    if not any((d / f).is_file() for f in TOKENIZER_VOCAB_FILES):
        return []
    return [d / f for f in TOKENIZER_FILES if (d / f).is_file()]


def files_identity(files: list[Path]) -> str:
    """Hash of named files' contents (names relative to their directory)."""
    return stable_hash({f.name: file_sha256(f) for f in files})[:16]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, cached by (path, size, mtime) within a process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
