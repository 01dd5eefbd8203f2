"""Session fixtures: one locally trained tokenizer and a tiny random-weight checkpoint per family."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hf_tiny import FAMILIES, build_checkpoint, train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def hf_tokenizer() -> Any:
    return train_tokenizer("bpe")


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory: pytest.TempPathFactory, hf_tokenizer: Any) -> dict[str, Path]:
    """family → checkpoint directory (config.json, model.safetensors, tokenizer files)."""
    root = tmp_path_factory.mktemp("hf")
    return {f: build_checkpoint(f, root / f, hf_tokenizer) for f in FAMILIES}


@pytest.fixture(scope="session")
def hf_adapters(hf_checkpoints: dict[str, Path]) -> dict[str, Any]:
    """family → loaded HFAdapter (CPU), loaded through ``hf:PATH`` like the CLI does."""
    from evalkit.models import ADAPTERS
    from evalkit.spec import load_model_spec

    out = {}
    for f, d in hf_checkpoints.items():
        spec = load_model_spec(f"hf:{d}")
        ADAPTERS.get("hf").check(spec)
        out[f] = ADAPTERS.get("hf")(spec, "cpu")
    return out
