"""Adapters (native, hf, vllm) and the native architectures."""

from evalkit.models.base import ADAPTERS, Adapter, register_adapter
from evalkit.models import native  # noqa: F401  (registers the mixers)
from evalkit.models import native_adapter  # noqa: F401  (registers the 'native' adapter)
from evalkit.models import hf_adapter  # noqa: F401  (registers the 'hf' adapter)
from evalkit.models import vllm_adapter  # noqa: F401  (registers the 'vllm' adapter; imports no vllm)

__all__ = ["ADAPTERS", "Adapter", "register_adapter"]
