"""The ``hf`` adapter: any local transformers ``AutoModelForCausalLM`` checkpoint and its tokenizer.

``--models hf:PATH`` or a model spec with ``kind: hf`` and ``checkpoint: PATH``; options (spec
``options:``) are ``dtype`` (auto | float32 | bfloat16 | float16; auto = float32 on CPU, bfloat16
on CUDA), ``chat_template`` (wrap prompts in the tokenizer's chat template), ``trust_remote_code``
(default false), ``device`` (overrides ``--device``) and ``kernels`` (auto | evalkit | transformers:
whether Mamba-family mixers run evalkit's scan / SSD / decode-step kernels, ``hf_kernels``; auto =
evalkit on CUDA where transformers would run its PyTorch fallback). Everything loads with
``local_files_only=True``: nothing is fetched.

Identity = hash(config.json, every weights file, the tokenizer files, the options that change
outputs), so a checkpoint retrained in place never reuses old results. ``describe()`` derives the
layer layout, attention fraction and state bytes from the config (``hf_layout``).

Batching (see docs/hf.md): teacher-forced batches are padded on the *right*; causal models never
look right, so the logits of real positions do not depend on the padding, for every family — SSM
and hybrid ones included, whose recurrent state left pads would otherwise leak into. Greedy
generation gets equal-length batches only (the runner groups by answer position), so no padding
reaches a recurrent state there either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from evalkit.errors import CheckpointError
from evalkit.models.base import Adapter, file_sha256, files_identity, register_adapter, stable_hash, tokenizer_files
from evalkit.models.hf_kernels import MODES as KERNEL_MODES
from evalkit.models.hf_kernels import require_family as require_kernel_family
from evalkit.models.hf_kernels import route as route_kernels
from evalkit.models.hf_layout import describe_config

if TYPE_CHECKING:
    import torch

    from evalkit.spec import ModelSpec

DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIONS: dict[str, Any] = {"dtype": DTYPES, "chat_template": bool, "trust_remote_code": bool, "device": str,
                           "kernels": KERNEL_MODES}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZERS: dict[tuple[str, str], Any] = {}


def _dir(spec: ModelSpec) -> Path:
    if spec.checkpoint is None:
        raise CheckpointError(f"model spec '{spec.name}' (kind: hf) has no checkpoint: give a transformers "
                              "checkpoint directory (checkpoint: PATH, or --models hf:PATH)")
    return Path(spec.checkpoint)


def _weights(d: Path) -> list[Path]:
    return sorted({f for pattern in WEIGHT_PATTERNS for f in d.glob(pattern) if f.is_file()})


def _config(d: Path) -> dict[str, Any]:
    f = d / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{d}: no config.json, so this is not a transformers checkpoint directory")
    try:
        cfg = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable config: {e}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise CheckpointError(f"{f}: config has no 'model_type', so transformers cannot tell the architecture")
    return cfg


@register_adapter
class HFAdapter(Adapter):
    kind = "hf"
    formats = ("text",)

    # --- from the spec alone ----------------------------------------------------------------
    @classmethod
    def validate_arch(cls, arch: dict[str, Any]) -> None:
        if arch:
            raise ValueError(f"kind 'hf' takes no 'arch' (the architecture is the checkpoint's config.json); "
                             f"got '{next(iter(arch))}'")

    option_table: ClassVar[dict[str, Any]] = OPTIONS  # name → tuple of choices, or the value's type

    @classmethod
    def options(cls, spec: ModelSpec) -> dict[str, Any]:
        return {"dtype": "auto", "chat_template": False, "trust_remote_code": False, "device": None,
                "kernels": "auto", **spec.options_dict()}

    @classmethod
    def random_weights(cls, spec: ModelSpec) -> bool:
        return False

    @classmethod
    def identity(cls, spec: ModelSpec) -> str:
        d = _dir(spec)
        opts = cls.options(spec)
        return stable_hash({
            "adapter": cls.kind, "config": file_sha256(d / "config.json"),
            "weights": {f.name: file_sha256(f) for f in _weights(d)}, "tokenizer": cls.tokenizer_identity(spec),
            "options": {"dtype": opts["dtype"], "chat_template": opts["chat_template"]},
        })[:16]

    @classmethod
    def max_context(cls, spec: ModelSpec) -> int | None:
        return describe_config(_config(_dir(spec)))["max_context"]

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Config, known causal-LM architecture, weights, tokenizer and (when asked for) a chat
        template, all present: CheckpointError naming the path and what is missing."""
        d = _dir(spec)
        if not d.is_dir():
            raise CheckpointError(f"{d}: checkpoint directory does not exist")
        cfg = _config(d)
        opts = cls.options(spec)
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        from evalkit.registry import did_you_mean

        mt = cfg["model_type"]
        if not opts["trust_remote_code"]:
            if mt not in CONFIG_MAPPING_NAMES:
                import transformers

                raise CheckpointError(f"{d}/config.json: unknown architecture (model_type '{mt}' is not known to "
                                      f"transformers {transformers.__version__})"
                                      f"{did_you_mean(mt, tuple(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))}")
            if mt not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
                raise CheckpointError(f"{d}/config.json: model_type '{mt}' is not a causal language model "
                                      "(AutoModelForCausalLM cannot load it)")
        if not _weights(d):
            raise CheckpointError(f"{d}: no weights files (*.safetensors or pytorch_model*.bin)")
        if not tokenizer_files(d):
            raise CheckpointError(f"{d}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json); the text "
                                  "format needs the model's own tokenizer")
        if opts.get("kernels") == "evalkit":  # (vllm's subclass has no such option)
            require_kernel_family(mt, f"{d}/config.json")
        if opts["chat_template"] and not getattr(cls.load_tokenizer(spec), "chat_template", None):
            raise CheckpointError(f"{d}: option chat_template: true, but the tokenizer has no chat template "
                                  "(no chat_template.jinja and none in tokenizer_config.json)")

    @classmethod
    def tokenizer_identity(cls, spec: ModelSpec) -> str | None:
        files = tokenizer_files(_dir(spec))
        return files_identity(files) if files else None

    @classmethod
    def load_tokenizer(cls, spec: ModelSpec) -> Any:
        d = _dir(spec)
        ident = cls.tokenizer_identity(spec)
        if ident is None:
            raise CheckpointError(f"{d}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
        key = (str(d), ident)
        if key not in _TOKENIZERS:
            from transformers import AutoTokenizer

            try:
                _TOKENIZERS[key] = AutoTokenizer.from_pretrained(
                    str(d), local_files_only=True, trust_remote_code=cls.options(spec)["trust_remote_code"])
            except Exception as e:  # transformers raises many types for a broken tokenizer
                raise CheckpointError(f"{d}: tokenizer could not be loaded ({type(e).__name__}: {e})") from None
        return _TOKENIZERS[key]

    @classmethod
    def render_options(cls, spec: ModelSpec) -> dict[str, Any]:
        return {"chat": bool(cls.options(spec)["chat_template"])}

    # --- a loaded model ----------------------------------------------------------------------
    def __init__(self, spec: ModelSpec, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # evalkit shows its own progress

        opts = self.options(spec)
        device = opts["device"] or device
        super().__init__(spec, device)
        d = _dir(spec)
        self.tokenizer = self.load_tokenizer(spec)
        dtype = opts["dtype"]
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        self.dtype = getattr(torch, dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True, dtype=self.dtype,
                                                         trust_remote_code=opts["trust_remote_code"])
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{d}: model could not be loaded ({type(e).__name__}: {e})") from None
        self.model = model.to(device).eval()
        self.kernel_path = route_kernels(self.model, opts["kernels"], device)  # Mamba mixers: whose kernels
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else model.config.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
        # greedy means greedy: drop the checkpoint's sampling / penalty defaults
        self.model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos,
                                                        pad_token_id=self.pad_id)
        import inspect

        self._cache_arg = ("cache_params" if "cache_params" in inspect.signature(self.model.forward).parameters
                           else "past_key_values")
        self._torch = torch

    def describe(self) -> dict[str, Any]:
        return {**describe_config(self.model.config), "params": sum(p.numel() for p in self.model.parameters()),
                "kind": self.kind, "random_weights": False, "dtype": str(self.dtype).replace("torch.", ""),
                "tokenizer": self.tokenizer_identity(self.spec), "kernel_path": self.kernel_path}

    def predict(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced argmax at ``positions`` (B, P) of ``input_ids`` (B, L); logits are only
        computed at the positions asked for (``logits_to_keep``), never over the whole vocabulary
        × length."""
        torch = self._torch
        with torch.inference_mode():
            keep = torch.unique(positions)  # sorted (U,)
            out = self.model(input_ids=input_ids.to(self.device), logits_to_keep=keep.to(self.device),
                             use_cache=False)
            pred = out.logits.argmax(-1).cpu()  # (B, U)
            return torch.gather(pred, 1, torch.searchsorted(keep, positions))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of equal-length prompts (B, L) → (B, max_new_tokens); stops at EOS,
        later positions hold the pad id."""
        torch = self._torch
        ids = input_ids.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      num_beams=1, max_new_tokens=max_new_tokens)
        new = out[:, ids.shape[1]:].cpu()
        if new.shape[1] < max_new_tokens:
            new = torch.cat([new, new.new_full((new.shape[0], max_new_tokens - new.shape[1]), self.pad_id)], 1)
        return new

    # --- cost probe hooks (evalkit/cost.py) --------------------------------------------------
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Prompt (B, L) → last logits (B, V) and the model's cache. The cache is transformers'
        own object and is updated in place by ``decode`` (so repeated decodes from one prefill
        see a cache a few tokens longer; negligible for latency)."""
        with self._torch.inference_mode():
            out = self.model(input_ids=input_ids.to(self.device), use_cache=True, logits_to_keep=1)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache_params", None)
        return out.logits[:, -1], cache

    def decode(self, token: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One decode step: token (B,) → logits (B, V) and the cache."""
        with self._torch.inference_mode():
            out = self.model(input_ids=token.to(self.device)[:, None], use_cache=True,
                             **{self._cache_arg: state})
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache_params", None)
        return out.logits[:, -1], cache
