"""The ``native`` adapter: evalkit's own transformer / Mamba / Mamba-2 / hybrid models.

Options (spec ``options:``, or ``evalkit cost --dtype / --prefill-chunk``):

- ``dtype``: float32 (default) | bfloat16 | float16 — the weights' and activations' dtype. Part of
  the identity when not float32 (a bf16 model scores and costs differently), so float32 cells and
  cost rows keep their keys.
- ``prefill_chunk``: 0 (default: one pass) or N > 0 — the cost probe's prefill runs the prompt in
  pieces of N tokens with state passing (``NativeLM.prefill(chunk=N)``): the same result, with
  activations bounded by N tokens, which is what lets a million-token prompt fit on one GPU.
  Not part of the identity (it changes how, not what, is computed); ``describe()`` records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from evalkit.errors import CheckpointError
from evalkit.models.base import Adapter, file_sha256, register_adapter, stable_hash

if TYPE_CHECKING:
    import torch

    from evalkit.models.native.config import NativeConfig
    from evalkit.spec import ModelSpec


def weights_file(spec: ModelSpec) -> Path | None:
    """The safetensors file of a spec's checkpoint (a directory or the file itself)."""
    if spec.checkpoint is None:
        return None
    p = Path(spec.checkpoint)
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise CheckpointError(f"{f}: checkpoint weights file not found")
    return f


DTYPES = ("float32", "bfloat16", "float16")
DEFAULTS: dict[str, Any] = {"dtype": "float32", "prefill_chunk": 0}


@register_adapter
class NativeAdapter(Adapter):
    kind = "native"
    formats = ("tokens",)
    list_fields = ("pattern", "attn_layer_idx")
    option_table: ClassVar[dict[str, Any]] = {"dtype": DTYPES, "prefill_chunk": int}

    @classmethod
    def check_option_type(cls, k: str, v: Any, want: type) -> None:
        super().check_option_type(k, v, want)
        if k == "prefill_chunk" and v < 0:
            raise ValueError(f"option 'prefill_chunk' must be 0 (one pass) or a positive number of tokens, got {v!r}")

    @classmethod
    def options(cls, spec: ModelSpec) -> dict[str, Any]:
        return {**DEFAULTS, **spec.options_dict()}

    @classmethod
    def config(cls, spec: ModelSpec) -> NativeConfig:
        from evalkit.models.native.config import NativeConfig

        return NativeConfig.from_dict(spec.arch_dict()).resolved()

    @classmethod
    def validate_arch(cls, arch: dict[str, Any]) -> None:
        from evalkit.models.native.config import NativeConfig

        NativeConfig.from_dict(arch).resolved()

    @classmethod
    def identity(cls, spec: ModelSpec) -> str:
        f = weights_file(spec)
        weights = f"sha256:{file_sha256(f)}" if f else f"init_seed:{spec.init_seed}"
        ident = {"adapter": cls.kind, "config": cls.config(spec).to_dict(), "weights": weights}
        dtype = cls.options(spec)["dtype"]
        if dtype != DEFAULTS["dtype"]:  # float32 identities stay as they were before the option
            ident["dtype"] = dtype
        return stable_hash(ident)[:16]

    @classmethod
    def max_context(cls, spec: ModelSpec) -> int | None:
        return cls.config(spec).max_context

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Compare the safetensors header (names, shapes, file size) with the spec's config
        without reading the weights."""
        f = weights_file(spec)
        if f is None:
            return
        import torch
        from safetensors import safe_open

        from evalkit.models.native.lm import NativeLM

        try:
            with safe_open(str(f), framework="pt") as fh:
                shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        except Exception as e:  # safetensors raises its own types for bad headers / short files
            raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
        cfg = cls.config(spec)
        with torch.device("meta"):
            model = NativeLM(cfg)
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if cfg.tie_embeddings:
            want.pop("lm_head.weight", None)
        for name, shape in want.items():
            if name not in shapes:
                raise CheckpointError(f"{f}: missing tensor '{name}' (model spec '{spec.name}')")
            if shapes[name] != shape:
                raise CheckpointError(f"{f}: tensor '{name}' has shape {shapes[name]}, "
                                      f"model spec '{spec.name}' expects {shape}")
        extra = sorted(set(shapes) - set(want))
        if extra:
            raise CheckpointError(f"{f}: unexpected tensor '{extra[0]}' (model spec '{spec.name}')")
        cls._check_config(f, spec)

    @classmethod
    def _check_config(cls, f: Path, spec: ModelSpec) -> None:
        """The checkpoint's config.json must be the spec's config: fields that change no tensor
        shape (rope_theta, max_context, ...) are caught here, at plan time, not at load time."""
        import json

        from evalkit.models.native.config import NativeConfig
        from evalkit.models.native.lm import CONFIG_FILE

        path = f.parent / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found (a checkpoint needs it beside {f.name})")
        try:
            got = NativeConfig.from_dict(json.loads(path.read_text())).resolved().to_dict()
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{path}: {e}") from None
        want = cls.config(spec).to_dict()
        diff = sorted(k for k in want.keys() | got.keys() if got.get(k) != want.get(k))
        if diff:
            raise CheckpointError(f"{f.parent}: checkpoint config differs from model spec "
                                  f"'{spec.name}' in field '{diff[0]}' ({got.get(diff[0])!r} vs {want.get(diff[0])!r})")

    def __init__(self, spec: ModelSpec, device: str) -> None:
        super().__init__(spec, device)
        import torch

        from evalkit.models.native.lm import NativeLM

        cfg = self.config(spec)
        f = weights_file(spec)
        if f is None:
            model = NativeLM(cfg)
            model.init_weights(spec.init_seed)
        else:
            model = NativeLM.from_pretrained(f)
            got, want = model.cfg.resolved().to_dict(), cfg.to_dict()
            diff = sorted(k for k in want if got.get(k) != want.get(k))
            if diff:
                raise CheckpointError(f"{f.parent}: checkpoint config differs from model spec "
                                      f"'{spec.name}' in field '{diff[0]}' ({got.get(diff[0])!r} vs {want.get(diff[0])!r})")
        opts = self.options(spec)
        self.prefill_chunk = int(opts["prefill_chunk"])
        self.model = model.to(device=device, dtype=getattr(torch, opts["dtype"])).eval()
        self._torch = torch

    def describe(self) -> dict[str, Any]:
        opts = {k: v for k, v in self.options(self.spec).items() if v != DEFAULTS[k]}  # only what was set
        return {**self.model.describe(), "kind": self.kind, "random_weights": self.random_weights(self.spec), **opts}

    def predict(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        torch = self._torch
        with torch.inference_mode():
            h = self.model.hidden(input_ids.to(self.device))  # (B, L, D)
            idx = positions.to(self.device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
            logits = self.model.head(torch.gather(h, 1, idx))  # (B, P, V)
            return logits.argmax(-1).cpu()

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        with self._torch.inference_mode():
            return self.model.generate_greedy(input_ids.to(self.device), max_new_tokens).cpu()

    # --- cost probe hooks (evalkit/cost.py): results stay on the device --------------------
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Prompt (B, L) → last position's logits (B, V) and the decode state, on the device."""
        with self._torch.inference_mode():
            return self.model.prefill(input_ids.to(self.device), chunk=self.prefill_chunk)

    def decode(self, token: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One decode step from a state: token (B,) → logits (B, V) and the next state."""
        with self._torch.inference_mode():
            return self.model.step(token.to(self.device), state)
