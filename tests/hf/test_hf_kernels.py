"""HF Mamba-family mixers routed to evalkit's kernels (evalkit/models/hf_kernels.py) against
transformers' own PyTorch fallback: logits of a right-padded prefill and greedy decoding with the
model's cache, on a tiny checkpoint of every routed family; the ops against transformers' functions
on random inputs; the adapter's ``kernels`` option, ``describe()['kernel_path']`` and the cost row.

Without a GPU the Triton kernels run under the interpreter (TRITON_INTERPRET=1, set before triton
is imported; ``EVALKIT_KERNELS=triton`` sends CPU tensors to them), in float32 (bf16 dots are wrong
in the interpreter; bf16 runs through evalkit's reference instead). The interpreter runs the
selective scan's associative scan element by element (~0.8 s per 32 steps × 8 channels), so the
Mamba-1 checkpoints here are 8 channels wide.

Weights are redrawn at O(1) scale (``hf_tiny.sharpen``): with the checkpoints' 0.02-std init the
state path carries ~1e-6 of the hybrids' logits, and a comparison of logits could not fail.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from hf_tiny import _config, save_checkpoint, sharpen, token_ids  # noqa: E402

from evalkit.errors import CheckpointError  # noqa: E402
from evalkit.kernels import dispatch  # noqa: E402
from evalkit.models import hf_kernels  # noqa: E402
from evalkit.models.hf_kernels import FAMILIES, routed_calls  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # ‖routed − fallback‖ / ‖fallback‖ on the logits
L, CUT, PROMPT, NEW = 37, 29, 20, 4  # prefill length (crosses a 32-step chunk), pad start of row 1, decode


# Mamba-2 mixers of hf_tiny with 2 heads of 32 (same width): the interpreter's cost is per (batch, head)
TWO_HEADS = {"mamba2": {"num_heads": 2, "head_dim": 32}, "zamba2": {"n_mamba_heads": 2, "mamba_headdim": 32},
             "falcon_h1": {"mamba_n_heads": 2, "mamba_d_head": 32}, "bamba": {"mamba_n_heads": 2, "mamba_d_head": 32},
             "nemotron_h": {"mamba_num_heads": 2, "mamba_head_dim": 32},
             "granitemoehybrid": {"mamba_n_heads": 2, "mamba_d_head": 32}}


def _kernel_config(family: str, tok: Any) -> Any:
    """hf_tiny's config; Mamba-1 mixers 8 channels wide (one selective-scan program per row),
    Mamba-2 mixers with 2 heads."""
    import transformers as tf

    ids, v = token_ids(tok), len(tok)
    if family == "mamba":
        return tf.MambaConfig(vocab_size=v, hidden_size=8, num_hidden_layers=2, state_size=8, expand=1, **ids)
    if family == "falcon_mamba":
        return tf.FalconMambaConfig(vocab_size=v, hidden_size=8, num_hidden_layers=1, state_size=8, expand=1, **ids)
    if family == "jamba":
        return tf.JambaConfig(vocab_size=v, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, intermediate_size=16, attn_layer_period=2, attn_layer_offset=1,
                              expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
                              mamba_d_state=8, mamba_expand=1, mamba_dt_rank=4, **ids)
    cfg = _config(family, v, ids)
    cfg.update(TWO_HEADS.get(family, {}))
    return cfg


@pytest.fixture(scope="module")
def kernel_checkpoints(tmp_path_factory: pytest.TempPathFactory, hf_tokenizer: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-kernels")
    return {f: save_checkpoint(_kernel_config(f, hf_tokenizer), root / f, hf_tokenizer) for f in FAMILIES}


def _load(d: Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForCausalLM

    return sharpen(AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype).to(DEV).eval())


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 600, (2, L), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, CUT:] = 0  # row 1 right-padded, as the adapter pads
    return ids.to(DEV), mask.to(DEV)


def _run(model: Any) -> dict[str, Any]:
    """Logits of a padded batch (no mask, and masked), and greedy decoding with the cache."""
    ids, mask = _inputs()
    prompt = ids[:1, :PROMPT]
    with torch.inference_mode():
        gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
        return {"plain": model(input_ids=ids, use_cache=False).logits.float(),
                "masked": model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(),
                "tokens": gen.sequences, "steps": torch.stack(gen.logits).float()}


def _forced(model: Any) -> dict[str, Any]:
    """Logits of the padded batch (no mask, and masked) and of NEW decode steps from the cache,
    each step fed a fixed token (so that two models compared see the same inputs even where
    their greedy choices would differ, as in bf16)."""
    import inspect

    ids, mask = _inputs()
    cache_arg = "cache_params" if "cache_params" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = model(input_ids=ids[:1, :PROMPT], use_cache=True)
        cache, steps = getattr(out, cache_arg), []
        for t in range(PROMPT, PROMPT + NEW):
            out = model(input_ids=ids[:1, t : t + 1], use_cache=True, **{cache_arg: cache})
            cache = getattr(out, cache_arg)
            steps.append(out.logits[:, -1])
        return {"plain": model(input_ids=ids, use_cache=False).logits.float(),
                "masked": model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(),
                "steps": torch.stack(steps).float()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all()
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_routed_model_matches_transformers_fallback(family: str, kernel_checkpoints: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Routed through the Triton kernels, a model gives transformers' logits: prefill of a batch
    with a right-padded row (with and without the attention mask), and every step of greedy
    decoding from the cache (same tokens). Another copy of the model, not routed, keeps running
    transformers' fallback beside it; unrouting restores transformers' path bit for bit."""
    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    fallback = _load(kernel_checkpoints[family])
    routed = copy.deepcopy(fallback)
    assert hf_kernels.route(routed, "evalkit", DEV) == hf_kernels.PATH_EVALKIT
    calls, kernels = routed_calls(), dispatch.kernel_calls()
    want = _run(fallback)  # the unrouted copy: no evalkit op runs
    assert routed_calls() == calls and dispatch.kernel_calls() == kernels
    got = _run(routed)
    scan = "scan" if FAMILIES[family] == "mamba" else "ssd"
    assert routed_calls()[scan] > calls[scan] and routed_calls()["step"] > calls["step"]
    assert dispatch.kernel_calls() > kernels
    for k in ("plain", "masked", "steps"):
        assert _rel(got[k], want[k]) < TOL[torch.float32], k
    assert torch.equal(got["tokens"], want["tokens"])
    hf_kernels.unroute(routed)
    assert not hf_kernels.is_routed(routed)
    with torch.inference_mode():
        ids, mask = _inputs()
        assert torch.equal(routed(input_ids=ids, attention_mask=mask, use_cache=False).logits, want["masked"])


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_routed_bf16_is_as_close_to_fp32_as_transformers(family: str, kernel_checkpoints: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 weights and activations: the routed ops take bf16 inputs, keep fp32 states and return
    what the mixer expects; against the fp32 model, routed bf16 logits (prefill and decode steps)
    are no farther off than transformers' own bf16 path. On CPU through evalkit's reference (the
    interpreter's bf16 dots are wrong), on a GPU through the kernels."""
    monkeypatch.setenv("EVALKIT_KERNELS", "triton" if ON_GPU else "ref")
    exact = _forced(_load(kernel_checkpoints[family]))
    fallback = _load(kernel_checkpoints[family], torch.bfloat16)
    routed = copy.deepcopy(fallback)
    hf_kernels.route(routed, "evalkit", DEV)
    want, got = _forced(fallback), _forced(routed)
    for k in ("plain", "masked", "steps"):
        assert _rel(got[k], exact[k]) <= 1.5 * _rel(want[k], exact[k]) + 1e-3, k
        assert _rel(got[k], want[k]) < TOL[torch.bfloat16], k


@pytest.mark.parametrize("family", list(FAMILIES))
def test_state_path_carries_the_logits(family: str, kernel_checkpoints: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparisons above can fail: in the sharpened models, zeroing B in the routed scan (no
    input reaches the state) changes the logits by far more than the tolerance."""
    import evalkit.kernels.selective_scan as ss_mod
    import evalkit.kernels.ssd as ssd_mod

    monkeypatch.setenv("EVALKIT_KERNELS", "ref")
    model = _load(kernel_checkpoints[family])
    hf_kernels.route(model, "evalkit", DEV)
    ids, _ = _inputs()
    with torch.inference_mode():
        base = model(input_ids=ids, use_cache=False).logits
        scan, ssd = ss_mod.selective_scan, ssd_mod.ssd
        monkeypatch.setattr(ss_mod, "selective_scan", lambda u, d, A, B, C, **kw: scan(u, d, A, B * 0, C, **kw))
        monkeypatch.setattr(ssd_mod, "ssd", lambda x, dt, A, B, C, *a, **kw: ssd(x, dt, A, B * 0, C, *a, **kw))
        ablated = model(input_ids=ids, use_cache=False).logits
        assert _rel(ablated, base) > 1e3 * TOL[torch.float32]
        mixer = hf_kernels._mixers(model)[0][0]
        with pytest.raises(RuntimeError):  # a routed forward that raises leaves nothing routed behind
            mixer(torch.zeros(1, 3, 5, device=DEV))
        assert not hf_kernels._ROUTED.get()


def test_ops_match_transformers_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Mamba-2 ops against transformers' fallback functions on random inputs, beyond what the
    checkpoints exercise: 2 groups, a Δ limit, an initial state, the z gate (mamba-ssm's contract;
    the fallback ignores z), the decode step with expanded per-head Δ / A / D / bias, and a step
    whose Δ varies along the head dimension, which goes to transformers' function."""
    from transformers.models.mamba2 import modeling_mamba2 as mm

    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    scan, step = hf_kernels._original(mm.mamba2_chunk_scan), hf_kernels._original(mm.mamba2_selective_state_update)
    g = torch.Generator().manual_seed(3)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g).to(DEV)

    b, n, h, p, grp, N = 1, 37, 4, 16, 2, 8
    x, dt, A, B, C = r(b, n, h, p), r(b, n, h), -torch.rand(h, generator=g).to(DEV) - 0.5, r(b, n, grp, N), r(b, n, grp, N)
    kw = {"chunk_size": 32, "D": r(h), "dt_bias": r(h), "initial_states": r(b, h, p, N), "dt_softplus": True,
          "dt_limit": (0.05, 1.0), "return_final_states": True}
    z = r(b, n, h, p)
    y, final = hf_kernels._chunk_scan(scan, x, dt, A, B, C, z=z, **kw)
    y0, final0 = scan(x, dt, A, B, C, **kw)
    assert _rel(y, y0 * torch.nn.functional.silu(z)) < 1e-5 and _rel(final, final0) < 1e-5

    state, xs, zs, Bs, Cs = r(b, h, p, N), r(b, h, p), r(b, h, p), r(b, grp, N), r(b, grp, N)
    per_head = {"D": r(h)[:, None].expand(h, p), "dt_bias": r(h)[:, None].expand(h, p), "z": zs, "dt_softplus": True}
    A3 = A[:, None, None].expand(h, p, N)
    for dts, routed in ((r(b, h)[..., None].expand(b, h, p), True), (r(b, h, p), False)):
        calls = routed_calls()["step"]
        s1, s0 = state.clone(), state.clone()
        y1, y0 = hf_kernels._state_update(step, s1, xs, dts, A3, Bs, Cs, **per_head), step(s0, xs, dts, A3, Bs, Cs,
                                                                                            **per_head)
        assert routed_calls()["step"] == calls + routed
        assert _rel(y1, y0) < 1e-5 and _rel(s1, s0) < 1e-5 and not torch.equal(s1, state)


def test_adapter_kernels_option(kernel_checkpoints: dict[str, Path], hf_tokenizer: Any, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``options: {kernels: …}`` reaches the model: describe() and the cost row say which path ran,
    predictions agree; ``kernels: evalkit`` on a family without Mamba mixers is a CheckpointError
    naming the config; an unknown mode is refused."""
    import dataclasses

    from evalkit.cost import probe
    from evalkit.models import ADAPTERS
    from evalkit.spec import load_model_spec

    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    hf = ADAPTERS.get("hf")
    spec = load_model_spec(f"hf:{kernel_checkpoints['mamba2']}")
    adapters = {k: hf(dataclasses.replace(spec, options=(("kernels", k), ("dtype", "float32"))), DEV)
                for k in ("auto", "evalkit", "transformers")}
    paths = {k: a.describe()["kernel_path"] for k, a in adapters.items()}
    assert paths == {"auto": "evalkit" if ON_GPU else "torch-fallback", "evalkit": "evalkit",
                     "transformers": "torch-fallback"}
    ids = torch.randint(5, 600, (2, L), generator=torch.Generator().manual_seed(4))
    pos = torch.tensor([[30, 31, 36]] * 2)
    assert torch.equal(adapters["evalkit"].predict(ids, pos), adapters["transformers"].predict(ids, pos))
    for k, want in (("evalkit", "kernel"), ("transformers", "reference")):
        (row,) = probe(adapters[k], [L], DEV, repeats=1, decode_tokens=2)
        assert row["status"] == "ok" and row["path"] == want and row["model_info"]["kernel_path"] == paths[k]

    llama = save_checkpoint(_config("llama", len(hf_tokenizer), token_ids(hf_tokenizer)), tmp_path / "llama",
                            hf_tokenizer)
    lspec = load_model_spec(f"hf:{llama}")
    assert hf(lspec, DEV).describe()["kernel_path"] is None
    with pytest.raises(CheckpointError, match=r"config\.json: option kernels: evalkit, but model_type 'llama'"):
        hf.check(dataclasses.replace(lspec, options=(("kernels", "evalkit"),)))
    with pytest.raises(ValueError, match="option 'kernels' must be one of auto, evalkit, transformers"):
        hf.validate_options({"kernels": "fast"})
