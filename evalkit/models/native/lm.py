"""NativeLM: embedding → blocks (pre-RMSNorm mixer + optional SwiGLU MLP) → RMSNorm → head.

One class covers transformers, pure SSM / linear-attention stacks and hybrids: each layer's mixer
comes from ``cfg.resolved().layer_types()`` (the config's ``pattern``, or ``ssm`` / ``attention``
placed by ``attention_fraction``) via the MIXERS registry. Checkpoints are a directory with
``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalkit.errors import CheckpointError, ContextLengthError
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mixer import MIXERS, Mixer, init_normal_
from evalkit.models.native.mlp import RMSNorm, SwiGLU

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LMState:
    """Decode state of a whole model: one mixer state per layer and the next token's position."""

    layers: list[Any]
    pos: int


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)) when cfg.d_ff > 0."""

    def __init__(self, cfg: NativeConfig, layer_idx: int, mixer: str) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer: Mixer = MIXERS.get(mixer)(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.d_ff else None
        self.mlp = SwiGLU(cfg) if cfg.d_ff else None

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mlp(x + self.mixer(self.norm(x)))  # (B, L, D)

    def prefill(self, x: torch.Tensor, state: Any = None, total: int = 0) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.prefill(self.norm(x), state, total)
        return self._mlp(x + y), state

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.step(self.norm(x_t), state)
        return self._mlp(x_t + y), state  # (B, D)


class NativeLM(nn.Module):
    """A causal LM over token ids whose layers are attention and/or SSM mixers."""

    def __init__(self, cfg: NativeConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg.resolved()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # learned absolute positions (cfg.pos_emb == "learned"); RoPE lives in the attention layers
        self.pos_embed = nn.Embedding(cfg.max_context, cfg.d_model) if cfg.pos_emb == "learned" else None
        self.layers = nn.ModuleList(
            Block(self.cfg, i, kind) for i, kind in enumerate(self.cfg.layer_types()))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Deterministic init from ``seed``: every draw comes from one CPU torch.Generator in a
        fixed module order, so the same config and seed give identical weights on any machine."""
        gen = torch.Generator().manual_seed(seed)
        init_normal_(self.embed.weight, 0.02, gen)
        for block in self.layers:
            block.norm.weight.fill_(1.0)
            block.mixer.reset_parameters(gen)
            if block.mlp is not None:
                block.mlp_norm.weight.fill_(1.0)
                block.mlp.reset_parameters(gen)
        self.norm_f.weight.fill_(1.0)
        if not self.cfg.tie_embeddings:
            init_normal_(self.lm_head.weight, 0.02, gen)
        if self.pos_embed is not None:  # drawn last: configs without it keep their weights
            init_normal_(self.pos_embed.weight, 0.02, gen)

    def _embed(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embeddings (+ learned positions start .. start + L - 1): (B, L) → (B, L, D)."""
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(start, start + input_ids.shape[1], device=input_ids.device))
        return x

    # ---- parallel path --------------------------------------------------------------------
    def _check_length(self, length: int) -> None:
        if length > self.cfg.max_context:
            raise ContextLengthError(f"input of {length} tokens is longer than the model's "
                                     f"max_context of {self.cfg.max_context}")

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states, input_ids: (B, L) long → (B, L, D); pair with ``head`` to
        compute logits only where they are needed."""
        self._check_length(input_ids.shape[1])
        x = self._embed(input_ids)  # (B, L, D)
        for block in self.layers:
            x = block(x)
        return self.norm_f(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states: (..., D) → (..., V)."""
        return self.lm_head(h)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: (B, L) long → logits (B, L, V)."""
        return self.head(self.hidden(input_ids))

    # ---- recurrent path -------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, state: LMState | None = None,
                chunk: int = 0) -> tuple[torch.Tensor, LMState]:
        """Run a prompt (B, L) in parallel; return the last position's logits (B, V) and the
        decode state to continue from.

        ``state``: continue after an earlier prefill (or steps) instead of starting empty.
        ``chunk`` > 0: run the prompt in pieces of ``chunk`` tokens, each continuing from the
        state the previous one left (chunked prefill). The result is the same as one pass (up to
        rounding), but activations are only ever ``chunk`` tokens long, so a prompt of a million
        tokens fits where one pass would not; attention's KV cache still grows with the prompt.
        """
        start = 0 if state is None else state.pos
        L = input_ids.shape[1]
        if L == 0:
            raise ValueError("prefill needs at least one token")
        self._check_length(start + L)
        layers = [None] * len(self.layers) if state is None else list(state.layers)
        step = chunk if chunk > 0 else max(L, 1)
        for s in range(0, L, step):
            x = self._embed(input_ids[:, s:s + step], start + s)  # (B, ≤ chunk, D)
            for i, block in enumerate(self.layers):
                x, layers[i] = block.prefill(x, layers[i], start + L)
        return self.head(self.norm_f(x[:, -1])), LMState(layers, start + L)

    def step(self, token: torch.Tensor, state: LMState) -> tuple[torch.Tensor, LMState]:
        """Feed one token per sequence, token: (B,) long → logits (B, V) and the next state."""
        self._check_length(state.pos + 1)
        x = self._embed(token[:, None], state.pos)[:, 0]  # (B, D)
        states = []
        for block, s in zip(self.layers, state.layers):
            x, s = block.step(x, s)
            states.append(s)
        return self.head(self.norm_f(x)), LMState(states, state.pos + 1)

    @torch.no_grad()
    def generate_greedy(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of (B, L) prompts: (B, max_new_tokens) new token ids."""
        self._check_length(input_ids.shape[1] + max_new_tokens - 1)
        logits, state = self.prefill(input_ids)
        out = []
        for i in range(max_new_tokens):
            token = logits.argmax(-1)  # (B,)
            out.append(token)
            if i + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        return torch.stack(out, dim=1) if out else input_ids.new_zeros(input_ids.shape[0], 0)

    # ---- description ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Size, layout and decode-memory cost (bytes at bf16, summed over layers)."""
        mixers = [block.mixer for block in self.layers]
        return {
            "params": sum(p.numel() for p in self.parameters()),
            "layer_types": list(self.cfg.layer_types()),
            "attn_layer_idx": list(self.cfg.attn_layer_idx or ()),
            "attention_fraction": self.cfg.attention_fraction,
            "kv_bytes_per_token": sum(m.kv_bytes_per_token(2) for m in mixers),
            "fixed_state_bytes": sum(m.fixed_state_bytes(2) for m in mixers),
            "d_model": self.cfg.d_model,
            "n_layers": self.cfg.n_layers,
            "d_state": self.cfg.d_state,
            "vocab_size": self.cfg.vocab_size,
            **({"window": self.cfg.window} if "swa" in self.cfg.layer_types() else {}),
        }

    # ---- checkpoints ----------------------------------------------------------------------
    def _tensors_to_save(self) -> dict[str, torch.Tensor]:
        sd = self.state_dict()
        if self.cfg.tie_embeddings:
            sd.pop("lm_head.weight")  # the same tensor as embed.weight
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns it."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        save_file(self._tensors_to_save(), str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> NativeLM:
        """Load a checkpoint directory (or its model.safetensors). Strict: a missing, unreadable
        or mismatching file raises CheckpointError naming the file and the problem."""
        from safetensors.torch import load_file

        path = Path(path)
        weights = path if path.suffix == ".safetensors" else path / WEIGHTS_FILE
        config = weights.parent / CONFIG_FILE
        for f in (config, weights):
            if not f.is_file():
                raise CheckpointError(f"{f}: file not found")
        try:
            cfg = NativeConfig.from_dict(json.loads(config.read_text()))
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{config}: {e}") from None
        try:
            tensors = load_file(str(weights), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for bad headers / sizes
            raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None

        model = cls(cfg).to(map_location)
        expected = model._tensors_to_save()
        for name, t in expected.items():
            if name not in tensors:
                raise CheckpointError(f"{weights}: missing tensor '{name}'")
            if tuple(tensors[name].shape) != tuple(t.shape):
                raise CheckpointError(f"{weights}: tensor '{name}' has shape "
                                      f"{tuple(tensors[name].shape)}, config expects {tuple(t.shape)}")
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            raise CheckpointError(f"{weights}: unexpected tensor '{unexpected[0]}'")
        model.load_state_dict(tensors, strict=not cfg.tie_embeddings)
        return model
