"""Contract of the hf adapter over every family: describe() from the config (checked against the
model's own cache), teacher-forced batching (right padding) equals unbatched, greedy generation
agrees with teacher forcing, the runner hits exact lengths, the cost probe works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hf_tiny import FAMILIES

from evalkit.scoring import predict_greedy, predict_teacher_forced, score
from evalkit.tasks import TASKS
from evalkit.tasks.base import Rendered
from evalkit.tasks.text import decoder, render_text

NATIVE_KEYS = {"params", "layer_types", "attn_layer_idx", "attention_fraction", "kv_bytes_per_token",
               "fixed_state_bytes", "d_model", "n_layers", "vocab_size"}
EXPECTED = {  # family → (layer mixers, attention fraction)
    "llama": (["attention"] * 2, 1.0),
    "mamba": (["mamba"] * 2, 0.0),
    "mamba2": (["mamba2"] * 2, 0.0),
    "jamba": (["mamba", "attention", "mamba", "mamba"], 0.25),
    "zamba2": (["mamba2", "attention+mamba2", "mamba2", "attention+mamba2"], 0.5),
    "falcon_h1": (["attention+mamba2"] * 2, 1.0),
    "bamba": (["mamba2", "mamba2", "attention", "mamba2"], 0.25),
    "nemotron_h": (["mamba2", "attention", "mamba2", "mlp"], 1 / 3),
}


def _cache_elements(obj: Any, name: str = "", seen: set[int] | None = None) -> float:
    """Elements in a transformers cache, counting a conv state's window as d_conv - 1 (the
    minimum a recurrent conv needs, as evalkit counts it; transformers keeps d_conv)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * (obj.shape[-1] - 1) / obj.shape[-1] if "conv" in name else obj.numel()
    items: Any = []
    if isinstance(obj, (list, tuple)):
        items = [(name, x) for x in obj]
    elif isinstance(obj, dict):
        items = [(f"{name}.{k}", v) for k, v in obj.items()]
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        items = [(f"{name}.{k}", v) for k, v in vars(obj).items()]
    return sum(_cache_elements(v, str(k), seen) for k, v in items)


def rendered(tok: Any, lengths: tuple[int, ...] = (140, 163, 190)) -> list[Rendered]:
    cls = TASKS.get("needle")
    task = cls(cls.Params(depth=0.5))
    return [render_text(task.sample(L, np.random.default_rng(i), i), L, tokenizer=tok) for i, L in enumerate(lengths)]


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_comes_from_the_config_and_matches_the_cache(family: str, hf_adapters: dict[str, Any]) -> None:
    a = hf_adapters[family]
    info = a.describe()
    assert NATIVE_KEYS <= set(info)
    mixers, frac = EXPECTED[family]
    assert info["layer_types"] == mixers and info["attention_fraction"] == pytest.approx(frac)
    assert info["params"] == sum(p.numel() for p in a.model.parameters())
    n = {}
    for L in (3, 4):
        _, cache = a.prefill(torch.randint(5, 600, (1, L)))
        n[L] = _cache_elements(cache)
    assert info["kv_bytes_per_token"] == 2 * (n[4] - n[3])  # bf16 bytes, as native models report
    assert info["fixed_state_bytes"] == 2 * (n[3] - 3 * (n[4] - n[3]))
    assert (info["max_context"] is None) == (frac == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_batched_equals_unbatched(family: str, hf_adapters: dict[str, Any], hf_tokenizer: Any) -> None:
    """Samples of different lengths in one right-padded batch predict what each predicts alone,
    and what the plain full forward pass's argmax says."""
    a = hf_adapters[family]
    rs = rendered(hf_tokenizer)
    batched = predict_teacher_forced(a, rs)
    for r, p in zip(rs, batched):
        assert predict_teacher_forced(a, [r]) == [p]
        with torch.inference_mode():
            full = a.model(input_ids=torch.tensor([r.input_ids]), use_cache=False).logits[0].argmax(-1)
        assert p.answers == tuple(tuple(full[s - 1 : e - 1].tolist()) for s, e in r.answer_spans)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_agrees_with_teacher_forcing(family: str, hf_adapters: dict[str, Any],
                                                       hf_tokenizer: Any) -> None:
    """Make each sample's gold answer the model's own greedy continuation: teacher forcing must
    then call every answer right, token for token, and RULER-style substring scoring of the
    generation must too; one changed answer token must make teacher forcing say wrong. On the
    real gold answers, teacher-forced right implies generated right. Greedy batches of equal
    prompts equal unbatched generation."""
    a = hf_adapters[family]
    detok = decoder(hf_tokenizer)
    rs = rendered(hf_tokenizer)
    own = []
    for r in rs:
        (s, e), = r.answer_spans
        gen = a.generate(torch.tensor([r.input_ids[:s]]), e - s)[0].tolist()
        if a.pad_id in gen or hf_tokenizer.eos_token_id in gen:
            continue  # generation stopped early: no continuation of full length to compare
        text = detok(gen).strip()
        own.append(Rendered(r.input_ids[:s] + tuple(gen), r.answer_spans, "text", (text,), r.prompt_text))
    assert own, "every generation stopped at EOS"
    tf = predict_teacher_forced(a, own)
    greedy = predict_greedy(a, own, detok, extra=3)
    for r, t, g in zip(own, tf, greedy):
        assert t.answers == g.answers == (r.input_ids[r.answer_spans[0][0] :],)
        assert score(r, t, {})[0] and score(r, g, {})[0]
        s, e = r.answer_spans[0]
        wrong = Rendered(r.input_ids[: e - 1] + ((r.input_ids[e - 1] + 1) % len(hf_tokenizer),), r.answer_spans, "text")
        assert not score(wrong, predict_teacher_forced(a, [wrong])[0], {})[0]
    for r, t, g in zip(rs, predict_teacher_forced(a, rs), predict_greedy(a, rs, detok, extra=3)):
        if score(r, t, {})[0]:
            assert score(r, g, {})[0]
    prompts = torch.tensor([r.input_ids[:90] for r in rs])
    batch = a.generate(prompts, 4)
    assert all(torch.equal(batch[i], a.generate(prompts[i : i + 1], 4)[0]) for i in range(len(rs)))


@pytest.mark.parametrize("family", FAMILIES)
def test_cost_probe_measures_hf_models(family: str, hf_adapters: dict[str, Any]) -> None:
    from evalkit.cost import probe

    a = hf_adapters[family]
    info = a.describe()
    (row,) = probe(a, [48], "cpu", repeats=1, decode_tokens=2)
    assert row["status"] == "ok", row["error"]
    assert row["prefill_s"] > 0 and row["decode_s_per_token"] > 0
    assert row["kv_cache_bytes"] == 48 * info["kv_bytes_per_token"]
    assert row["fixed_state_bytes"] == info["fixed_state_bytes"]


def test_runner_stores_exact_lengths_for_every_family(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """plan → execute → store through the real loading path: text cells, every sample at the
    requested length, HF and native facts in one cells table."""
    from evalkit.runner import execute, plan
    from evalkit.spec import load_model_spec, load_task_spec
    from evalkit.store import Store

    spec = tmp_path / "needle.yaml"
    spec.write_text("task: needle\nlengths: [150, 191]\nsamples: 2\nparams: {depth: [0.5]}\n")
    models = [load_model_spec(f"hf:{d}") for d in hf_checkpoints.values()]
    cells = plan([load_task_spec(spec)], models)
    assert {c.format for c in cells} == {"text"} and all(c.tokenizer for c in cells)
    result = execute(cells, tmp_path / "runs", device="cpu", cost=False)
    assert not result.failed and len(result.ran) == 2 * len(models)
    store = Store.open_dir(tmp_path / "runs")
    try:
        for row in store.cells():
            assert row["format"] == "text" and row["n_skipped"] == 0
            assert [r["length"] for r in store.records(row["cell_key"])] == [row["context_length"]] * 2
            assert row["model_info"]["attention_fraction"] == pytest.approx(EXPECTED[row["model"]][1])
    finally:
        store.close()
