"""Tiny HF checkpoints for tests: a tokenizer trained here with ``tokenizers`` and random-weight
models of several families, saved with ``save_pretrained`` and loaded back through the real path.

Nothing is downloaded. Everything is seeded, so a checkpoint built twice has the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.tasks.text import HAYSTACK_WORDS, KEY_WORDS, NOISE_SENTENCES, NUMBERS, TEMPLATES, UUIDS, VALUE_WORDS

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = ("{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>[assistant] {% endif %}")


def _corpus() -> list[str]:
    t = TEMPLATES["ruler"]
    lines = list(NOISE_SENTENCES) + [" ".join(HAYSTACK_WORDS[i : i + 12]) for i in range(0, len(HAYSTACK_WORDS), 12)]
    lines += [" ".join(KEY_WORDS), " ".join(VALUE_WORDS), " ".join(NUMBERS), " ".join(UUIDS)]
    lines += [getattr(t, f) for f in t.__dataclass_fields__] * 3
    return lines * 2


def train_tokenizer(style: str = "bpe", vocab_size: int = 700) -> Any:
    """A fast tokenizer trained on the text format's own words: ``bpe`` (byte-level, GPT-2 /
    Llama-3 style, adds <s>) or ``metaspace`` (SentencePiece style ▁ pieces, adds no BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif style == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    else:
        raise ValueError(style)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if style == "bpe":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def _config(family: str, vocab: int, ids: dict[str, int]) -> Any:
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, **ids)
    attn = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=4096)
    if family == "llama":
        return tf.LlamaConfig(**common, **attn)
    if family == "mamba":
        return tf.MambaConfig(**common, state_size=8, expand=2, conv_kernel=4)
    if family == "mamba2":
        return tf.Mamba2Config(**common, state_size=8, expand=2, head_dim=16, num_heads=4, n_groups=1, conv_kernel=4,
                               chunk_size=32)
    if family == "jamba":
        return tf.JambaConfig(**{**common, "num_hidden_layers": 4}, **attn, attn_layer_period=4, attn_layer_offset=1,
                              expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
                              mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4)
    if family == "zamba2":
        return tf.Zamba2Config(**{**common, "num_hidden_layers": 4},
                               layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_attention_heads=4,
                               num_key_value_heads=4, intermediate_size=64, mamba_d_state=8,
                               mamba_headdim=8, n_mamba_heads=8, mamba_ngroups=1, num_mem_blocks=1, adapter_rank=8,
                               max_position_embeddings=4096, chunk_size=32, use_mem_rope=True)
    if family == "falcon_h1":
        return tf.FalconH1Config(**common, **attn, head_dim=8, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16,
                                 mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=32)
    if family == "bamba":
        return tf.BambaConfig(**{**common, "num_hidden_layers": 4}, **attn, attn_layer_indices=[2], mamba_n_heads=4,
                              mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1, mamba_expand=2, mamba_d_conv=4,
                              mamba_chunk_size=32)
    if family == "nemotron_h":
        return tf.NemotronHConfig(**{**common, "num_hidden_layers": 4}, hybrid_override_pattern="M*M-",
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                  ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=1, conv_kernel=4,
                                  expand=2, chunk_size=32, max_position_embeddings=4096)
    # two more Mamba families (not in FAMILIES: tests/hf/test_hf_kernels.py builds them)
    if family == "falcon_mamba":
        return tf.FalconMambaConfig(**common, state_size=8, expand=2, conv_kernel=4)
    if family == "granitemoehybrid":  # Mamba-2 with 2 groups and a Δ limit
        return tf.GraniteMoeHybridConfig(**{**common, "num_hidden_layers": 3}, **attn,
                                         layer_types=["mamba", "attention", "mamba"], num_local_experts=2,
                                         num_experts_per_tok=1, shared_intermediate_size=64, mamba_n_heads=4,
                                         mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                                         mamba_d_conv=4, mamba_chunk_size=32, time_step_limit=(0.0, 1.0))
    raise ValueError(f"unknown family {family}")


FAMILIES = ("llama", "mamba", "mamba2", "jamba", "zamba2", "falcon_h1", "bamba", "nemotron_h")


def build_checkpoint(family: str, directory: Path, tokenizer: Any, seed: int = 0) -> Path:
    """Random-weight ``family`` model sized to ``tokenizer``, saved with its tokenizer."""
    return save_checkpoint(_config(family, len(tokenizer), token_ids(tokenizer)), directory, tokenizer, seed)


def token_ids(tokenizer: Any) -> dict[str, int]:
    """The special-token ids a config built for ``tokenizer`` carries."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def sharpen(model: Any, seed: int = 0) -> Any:
    """Redraw ``model``'s weights in place at O(1) scale, so that the SSM state path carries the
    logits (with the 0.02-std init it carries ~1e-6 of a tiny hybrid's logits, and comparing two
    implementations of the scan by their logits could not fail): linear and conv weights
    ~ N(0, 1/fan_in), embeddings ~ N(0, 1); in every Mamba mixer (a module with ``A_log``)
    D ~ N(0, 0.1²) and the Δ bias ~ N(0, 1)."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)

    def draw(p: torch.Tensor, std: float) -> None:
        p.copy_(torch.randn(p.shape, generator=g) * std)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                draw(m.weight, 1 / math.sqrt(m.in_features))
            elif isinstance(m, torch.nn.Embedding):
                draw(m.weight, 1.0)
            elif isinstance(m, torch.nn.Conv1d):
                draw(m.weight, 1 / math.sqrt(m.kernel_size[0]))
            if hasattr(m, "A_log") and hasattr(m, "D"):
                draw(m.D, 0.1)
                draw(m.dt_bias if hasattr(m, "dt_bias") else m.dt_proj.bias, 1.0)
    return model


def save_checkpoint(cfg: Any, directory: Path, tokenizer: Any, seed: int = 0) -> Path:
    """A random-weight model from the transformers config ``cfg``, saved with ``tokenizer``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
