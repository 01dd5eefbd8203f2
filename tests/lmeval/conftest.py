"""Fixtures of the lm-eval bridge tests: a locally trained tokenizer (the HF tests' helper), a
tiny native checkpoint that carries it, and one without a tokenizer. Nothing is downloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval", reason="the lm-eval bridge needs the lm-eval extra")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))
sys.path.insert(0, str(Path(__file__).parent))

from hf_tiny import build_checkpoint, train_tokenizer
from lmeval_tiny import save_native


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return train_tokenizer("bpe")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def native_text_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return save_native(tmp_path_factory.mktemp("native_text"), len(tokenizer), tokenizer)


@pytest.fixture(scope="session")
def llama_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return build_checkpoint("llama", tmp_path_factory.mktemp("llama"), tokenizer)
