"""Helpers of the lm-eval bridge tests (imported by name: tests/lmeval is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_native(directory: Path, vocab: int, tokenizer: Any | None) -> Path:
    """A tiny hybrid (attention + Mamba-2) native checkpoint, with ``tokenizer`` saved beside it."""
    from evalkit.models.native.config import NativeConfig
    from evalkit.models.native.lm import NativeLM

    cfg = NativeConfig(vocab_size=vocab, d_model=32, n_layers=2, attention_fraction=0.5, n_heads=2, headdim=16,
                       chunk_size=16, max_context=512)
    model = NativeLM(cfg)
    model.init_weights(3)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
