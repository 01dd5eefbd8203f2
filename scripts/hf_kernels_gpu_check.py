"""HF Mamba families on CUDA: evalkit's routed kernels (evalkit/models/hf_kernels.py) against
transformers' own path, for correctness and for prefill time.

    python scripts/hf_kernels_gpu_check.py [--check-length 2048] [--lengths 4096,16384,65536]
                                           [--width 2048] [--budget 270] [--case-budget 45]

1. Correctness, per routed family (tiny checkpoints of tests/hf, weights redrawn at O(1) scale by
   ``hf_tiny.sharpen`` so that the state path carries the logits): logits of a batch of two
   ``--check-length`` prompts (the second right-padded; with and without the attention mask) and
   of 8 decoding steps from the cache. float32: routed vs transformers' path within 1e-3, and the
   same greedy tokens. bfloat16: against the float32 model, routed no farther off than
   transformers' own bf16 path (× 1.5 + 1e-3), decode steps fed fixed tokens.
2. Prefill time of random-weight, realistic-width Mamba-2 and Mamba models (``--width``, 4 layers,
   bf16, batch 1, ``logits_to_keep=1``) at ``--lengths``, routed vs transformers' path, the same
   model routed and unrouted (median of up to 3 timed runs after a warm-up; peak memory). Out of
   memory is a result ("OOM"); a case predicted (linearly from the previous length) to take longer
   than ``--case-budget`` seconds is skipped, and so is everything once ``--budget`` is spent.

Prints versions, what ``kernels: auto`` picks here (``mamba-ssm`` if transformers found it), and
one table per part with the device name. Exit 1 if a correctness check failed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "hf"))
sys.path.insert(0, str(REPO))

DEVICE = "cuda"  # --device cpu: a smoke run of this script's logic (EVALKIT_KERNELS=ref, tiny sizes)
TOL = {"float32": 1e-3, "bfloat16": 5e-2}  # ‖routed − transformers‖ / ‖transformers‖ on the logits
T0 = time.perf_counter()


def _elapsed() -> float:
    return time.perf_counter() - T0


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _release() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _rel(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float("nan") if not bool(a.isfinite().all()) else ((a - b).norm() / b.norm()).item()


def _prefill(model: Any, ids: Any, mask: Any) -> dict[str, Any]:
    import torch

    with torch.inference_mode():
        return {"plain": model(input_ids=ids, use_cache=False).logits.float(),
                "masked": model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()}


def _greedy(model: Any, ids: Any, new: int) -> dict[str, Any]:
    """Greedy decoding with the cache (transformers' generate): its step logits and tokens."""
    import torch

    prompt = ids[:1, : ids.shape[1] // 2]
    with torch.inference_mode():
        gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    return {"steps": torch.stack(gen.logits).float(), "tokens": gen.sequences}


def _forced(model: Any, ids: Any, new: int) -> dict[str, Any]:
    """Decode steps from the cache fed fixed tokens (the prompt's continuation), so that two models
    see the same inputs even where their greedy choices differ (bf16): step logits."""
    import inspect

    import torch

    n = ids.shape[1] // 2
    arg = "cache_params" if "cache_params" in inspect.signature(model.forward).parameters else "past_key_values"
    steps = []
    with torch.inference_mode():
        cache = getattr(model(input_ids=ids[:1, :n], use_cache=True), arg)
        for t in range(n, n + new):
            out = model(input_ids=ids[:1, t : t + 1], use_cache=True, **{arg: cache})
            cache = getattr(out, arg)
            steps.append(out.logits[:, -1])
    return {"steps": torch.stack(steps).float()}


def _check_family(d: Path, family: str, length: int, vocab: int) -> tuple[list[list[str]], int]:
    """fp32: routed vs transformers' path within TOL, same greedy tokens. bf16: against the fp32
    model, routed logits no farther off than transformers' own bf16 path (× 1.5 + 1e-3); decode
    steps fed fixed tokens. Rows for the table, failures."""
    import torch
    from hf_tiny import sharpen
    from transformers import AutoModelForCausalLM

    from evalkit.kernels import dispatch
    from evalkit.models import hf_kernels

    ids = torch.randint(5, vocab, (2, length), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[1, length * 3 // 4:] = 0  # row 1 right-padded and masked
    rows, failed, exact = [], 0, {}
    for dtype in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        model = sharpen(AutoModelForCausalLM.from_pretrained(str(d), dtype=getattr(torch, dtype)).to(DEVICE).eval())
        own = hf_kernels.route(model, "transformers", DEVICE)
        want = {**_prefill(model, ids, mask), **(_greedy(model, ids, 8) if dtype == "float32" else {})}
        forced = _forced(model, ids, 8)
        kernels = dispatch.kernel_calls()
        hf_kernels.route(model, "evalkit", DEVICE)
        got = {**_prefill(model, ids, mask), **(_greedy(model, ids, 8) if dtype == "float32" else _forced(model, ids, 8))}
        ran = dispatch.kernel_calls() > kernels or DEVICE != "cuda"
        if dtype == "float32":
            exact = {"plain": want["plain"], "masked": want["masked"], "steps": forced["steps"]}
            rel = {k: _rel(got[k], want[k]) for k in ("plain", "masked", "steps")}
            same = bool(torch.equal(got["tokens"], want["tokens"]))
            ok = ran and same and all(v < TOL[dtype] for v in rel.values())
            cells = [f"{v:.1e}" for v in rel.values()] + [str(same)]
        else:
            want["steps"] = forced["steps"]
            pair = {k: (_rel(got[k], exact[k]), _rel(want[k], exact[k])) for k in ("plain", "masked", "steps")}
            ok = ran and all(a <= 1.5 * b + 1e-3 for a, b in pair.values())
            cells = [f"{a:.1e} vs {b:.1e}" for a, b in pair.values()] + ["(fed)"]
        failed += not ok
        rows.append([family, dtype, ("ok" if ok else "FAIL") + ("" if ran else " (no kernel ran)"), own, *cells,
                     f"{time.perf_counter() - t0:.1f} s"])
        del model, want, got, forced
        _release()
    return rows, failed


def check_families(length: int, budget: float) -> tuple[list[list[str]], int]:
    """Part 1: routed vs transformers' path on every routed family; rows for the table, failures."""
    from hf_tiny import _config, save_checkpoint, token_ids, train_tokenizer

    from evalkit.models import hf_kernels

    tok = train_tokenizer("bpe")
    root = Path(tempfile.mkdtemp())
    rows, failed = [], 0
    for family in hf_kernels.FAMILIES:
        if _elapsed() > budget:
            rows.append([family, "-", "skipped: time budget spent", "", "", "", "", "", ""])
            continue
        try:
            d = save_checkpoint(_config(family, len(tok), token_ids(tok)), root / family, tok)
            r, f = _check_family(d, family, length, len(tok))
            rows += r
            failed += f
        except Exception as e:  # noqa: BLE001  (every family reports, the rest go on)
            failed += 1
            rows.append([family, "-", f"ERROR {type(e).__name__}: {str(e)[:120]}", "", "", "", "", "", ""])
            traceback.print_exc()
        _release()
    return rows, failed


def _realistic(kind: str, width: int) -> Any:
    import transformers as tf

    if kind == "mamba2":
        return tf.Mamba2Config(vocab_size=32000, hidden_size=width, num_hidden_layers=4, state_size=128, expand=2,
                               head_dim=64, num_heads=2 * width // 64, n_groups=1, chunk_size=256)
    return tf.MambaConfig(vocab_size=32000, hidden_size=width, num_hidden_layers=4, state_size=16, expand=2)


def _time_prefill(model: Any, L: int) -> tuple[float, int, Any]:
    """Median prefill seconds (1–3 runs after a warm-up), peak bytes, last logits."""
    import torch

    cuda = DEVICE == "cuda"
    ids = torch.randint(5, 32000, (1, L), generator=torch.Generator().manual_seed(L)).to(DEVICE)
    times: list[float] = []
    with torch.inference_mode():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits  # warm-up (timed once, as a guide)
        _sync()
        first = time.perf_counter() - t0
        for _ in range(_repeats(first)):
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
            _sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if cuda else 0
    return (statistics.median(times) if times else first), peak, out[0, -1].float()


def _repeats(first: float) -> int:
    """Timed runs after a warm-up that took ``first`` seconds (none past 10 s: the warm-up is the number)."""
    return 3 if first < 1.0 else 1 if first < 10 else 0


def time_prefill(lengths: list[int], width: int, budget: float, case_budget: float) -> list[list[str]]:
    """Part 2: prefill time routed vs transformers' path; rows for the table."""
    import torch
    from transformers import AutoModelForCausalLM

    from evalkit.models import hf_kernels

    rows = []
    for kind in ("mamba2", "mamba"):
        try:
            with torch.device(DEVICE):
                model = AutoModelForCausalLM.from_config(_realistic(kind, width), dtype=torch.bfloat16).eval()
        except Exception as e:  # noqa: BLE001
            rows.append([kind, "-", f"ERROR building: {type(e).__name__}: {e}"[:160], "", "", ""])
            continue
        warm = torch.randint(5, 32000, (1, 512)).to(DEVICE)
        last: dict[str, tuple[int, float] | None] = {}
        logits: dict[tuple[str, int], Any] = {}
        for path in ("evalkit", "transformers"):
            hf_kernels.unroute(model)
            own = hf_kernels.route(model, path, DEVICE)  # evalkit, or transformers' own: torch-fallback | mamba-ssm
            with torch.inference_mode():
                model(input_ids=warm, use_cache=False, logits_to_keep=1)  # Triton compiles, CUDA init
            last[path] = None
            for L in lengths:
                cell = [kind, str(L), own if path == "evalkit" else f"transformers: {own}"]
                prev = last[path]
                one = prev[1] * L / prev[0] if prev and prev[0] > 0 else 0.0  # linear in L
                predicted = one * (1 + _repeats(one))
                if _elapsed() > budget:
                    rows.append(cell + ["skipped: time budget spent", "", ""])
                    continue
                if prev == (-1, -1.0):
                    rows.append(cell + ["OOM (at a shorter length)", "", ""])
                    continue
                if predicted > case_budget:
                    rows.append(cell + [f"skipped: predicted {predicted:.0f} s > {case_budget:.0f} s", "", ""])
                    continue
                try:
                    sec, peak, out = _time_prefill(model, L)
                    logits[(path, L)] = out
                    last[path] = (L, sec)
                    agree = ""
                    if path == "transformers" and ("evalkit", L) in logits:
                        agree = f"{_rel(logits[('evalkit', L)], out):.1e}"
                    rows.append(cell + [f"{sec * 1e3:.1f} ms", f"{peak / 2**30:.1f} GiB", agree])
                except Exception as e:  # noqa: BLE001
                    oom = _is_oom(e)
                    rows.append(cell + ["OOM" if oom else f"ERROR {type(e).__name__}: {str(e)[:100]}", "", ""])
                    if oom:
                        last[path] = (-1, -1.0)
                    else:
                        traceback.print_exc()
                _release()
        hf_kernels.unroute(model)
        del model
        _release()
    return rows


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    import torch
    import transformers
    import triton

    from evalkit.models import hf_kernels

    ap = argparse.ArgumentParser()
    ap.add_argument("--check-length", type=int, default=2048)
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--budget", type=float, default=230.0, help="seconds for the whole script (soft)")
    ap.add_argument("--case-budget", type=float, default=45.0, help="seconds one timing case may be predicted")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    assert DEVICE != "cuda" or torch.cuda.is_available(), "no CUDA device"
    from transformers.models.mamba import modeling_mamba
    from transformers.models.mamba2 import modeling_mamba2

    own = hf_kernels._transformers_path([modeling_mamba.mamba_selective_scan, modeling_mamba2.mamba2_chunk_scan])
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}, triton "
          f"{triton.__version__}; transformers' own Mamba path here: {own}; so kernels: auto runs "
          f"{'evalkit' if own == hf_kernels.PATH_FALLBACK else 'transformers (mamba-ssm)'} on CUDA")

    rows, failed = check_families(args.check_length, args.budget * 0.45)
    print(f"\n## routed vs transformers' path, tiny sharpened checkpoints, L = {args.check_length}, {name}\n"
          "float32: rel = ‖routed − transformers‖ / ‖transformers‖ (greedy decode steps, same tokens?); "
          "bfloat16: rel to the float32 model, routed vs transformers (decode steps fed fixed tokens)")
    print(_table(["family", "dtype", "check", "transformers path", "prefill", "prefill, masked", "decode steps",
                  "same tokens", "time"], rows))
    sys.stdout.flush()

    lengths = [int(x) for x in args.lengths.split(",")]
    rows = time_prefill(lengths, args.width, args.budget, args.case_budget)
    print(f"\n## prefill, random weights, d_model {args.width}, 4 layers, bf16, batch 1 "
          f"({name}); rel = last logits evalkit vs transformers")
    print(_table(["model", "L", "path", "prefill", "peak memory", "rel"], rows))
    print(f"\ntotal {_elapsed():.0f} s; correctness failures: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
