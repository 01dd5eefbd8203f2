"""A tiny Llama that vLLM's CPU backend can serve, built here (nothing downloaded).

tests/hf/hf_tiny.py's Llama has head_dim 8; vLLM's CPU attention kernels take head sizes
32, 64, 80, 96, 112, 128, 160, 192, 224, 256 or 512 only ("Unsupported CPU attention
configuration: head_dim=8"), so this one uses 2 heads of 32 (1 KV head: grouped-query attention
is exercised too). Same locally trained tokenizer as the HF tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))

from hf_tiny import train_tokenizer


def build_llama(directory: Path, seed: int = 0) -> Path:
    """Random-weight float32 Llama (2 layers, d=64, head_dim=32) and its tokenizer, saved."""
    import torch
    import transformers as tf

    tok = train_tokenizer("bpe")
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, intermediate_size=128, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger logit gaps than the default init: argmax ties become vanishingly unlikely
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    build_llama(Path(sys.argv[1]))
