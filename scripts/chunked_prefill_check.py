"""GPU check of chunked prefill: one pass vs pieces with state passing, through the kernels.

python scripts/chunked_prefill_check.py   (prints one row per model / dtype)
"""

from __future__ import annotations

import torch

from evalkit.kernels.dispatch import kernel_calls
from evalkit.models.native import NativeConfig, NativeLM


def main() -> None:
    dev = "cuda"
    print(f"device: {torch.cuda.get_device_name()}")
    print("| model | dtype | L | chunk | kernel calls | max abs diff (last logits) | max abs logit | next step diff |")
    print("|---|---|---|---|---|---|---|---|")
    layouts = {"mamba": {"ssm": "mamba"}, "mamba2": {"ssm": "mamba2"},
               "hybrid": {"ssm": "mamba2", "attention_fraction": 0.25},
               "transformer": {"attention_fraction": 1.0}, "gated_deltanet": {"ssm": "gated_deltanet"},
               "pattern": {"pattern": "GWSA mM", "window": 512}}
    for name, lay in layouts.items():
        for dtype in (torch.float32, torch.bfloat16):
            cfg = NativeConfig.from_dict({"flavor": "small", "max_context": 1 << 16, **lay})
            m = NativeLM(cfg, seed=0).to(dev, dtype).eval()
            ids = torch.randint(0, cfg.vocab_size, (2, 5000), generator=torch.Generator().manual_seed(0)).to(dev)
            with torch.inference_mode():
                before = kernel_calls()
                full, s_full = m.prefill(ids)
                for chunk in (1000, 777):
                    part, s_part = m.prefill(ids, chunk=chunk)
                    tok = full.argmax(-1)
                    nxt = (m.step(tok, s_part)[0] - m.step(tok, s_full)[0]).abs().max().item()
                    print(f"| {name} | {str(dtype)[6:]} | 5000 | {chunk} | {kernel_calls() - before} | "
                          f"{(part - full).abs().max().item():.2e} | {full.abs().max().item():.2f} | {nxt:.2e} |")


if __name__ == "__main__":
    main()
