"""Cost probe: what a model costs per (context length), on the device where it runs.

For each length the probe measures, gpt-fast style (warm-up excluded, the device synchronised
before each timer stops, ``repeats`` timed runs, median reported):

- **prefill**: ``prefill(ids (B, L))`` → last logits + decode state; latency and tokens/s;
- **decode**: one ``step`` from the cached state (KV cache / SSM state) left by that prefill;
- **peak memory** during the prefill (see :class:`_CudaPeak` and :class:`_CpuPeak`);

and fills in analytic numbers: KV-cache and fixed-state bytes (bf16, from the mixers'
``kv_bytes_per_token`` / ``fixed_state_bytes``) and :func:`analytic_flops_per_token`.

Rows have exactly the columns of the store's ``costs`` table (``store.COST_COLUMNS``, documented in
docs/schema.md). Statuses: ``ok``; ``too_long`` (over the model's ``max_context``, not tried);
``oom`` (out of memory — the model's feasible context on this device ends there; every longer
length is recorded ``oom`` without being tried); ``error`` (anything else, with the reason; the
sweep goes on). ``path`` is ``kernel`` when a Triton kernel ran during the
measurement (see ``evalkit.kernels.dispatch``), else ``reference`` (the PyTorch mixers).

Entry points: :func:`probe` (a loaded adapter or a bare ``NativeLM``), :func:`probe_into_store`
(what ``evalkit run`` calls after a model's cells), :func:`scaling_exponent`.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evalkit.store import COST_COLUMNS, Store

if TYPE_CHECKING:

    from evalkit.models.native.config import NativeConfig

PATH_REFERENCE = "reference"
PATH_KERNEL = "kernel"  # a Triton kernel ran (evalkit.kernels.dispatch counted a kernel call)
STATE_DTYPE_BYTES = 2  # KV-cache / state bytes are reported at bf16, as describe() does
DONE_STATUSES = ("ok", "oom", "too_long")  # a stored row with one of these is not re-probed


# --------------------------------------------------------------------------- analytic FLOPs
def mixer_matmul_params(cfg: NativeConfig, mixer: str) -> int:
    """Weights one token multiplies through in a layer's mixer (linear and depthwise-conv
    weights; biases, norms and per-head scalars such as A, D, dt_bias are not matmuls).

    attention, swa: qkv (D × 3D) + out (D × D)                    = 4·D²
    mamba:     in (D × 2E) + conv (E·K) + x_proj (E × (R + 2N)) + dt_proj (R × E) + out (E × D)
    mamba2:    in (D × (2E + 2N + H)) + conv ((E + 2N)·K) + out (E × D)
    s4d:       in (D × 2E) + conv (E·K) + out (E × D)
    gated_deltanet: in (D × (2HN + 2E + 2H)) + conv ((2HN + E)·K) + out (E × D)
    with E = expand·D, K = d_conv, R = ceil(D / 16), H = E / headdim.
    """
    D, E, N, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv
    if mixer in ("attention", "swa"):
        return 4 * D * D
    if mixer == "s4d":
        return D * 2 * E + E * K + E * D
    if mixer == "gated_deltanet":
        H = E // cfg.headdim
        return D * (2 * H * N + 2 * E + 2 * H) + (2 * H * N + E) * K + E * D
    if mixer == "mamba":
        R = math.ceil(D / 16)
        return D * 2 * E + E * K + E * (R + 2 * N) + R * E + E * D
    if mixer == "mamba2":
        H = E // cfg.headdim
        return D * (2 * E + 2 * N + H) + (E + 2 * N) * K + E * D
    raise ValueError(f"no FLOPs formula for mixer '{mixer}'")


def mixer_sequence_flops(cfg: NativeConfig, mixer: str, context_length: int) -> float:
    """Per-token FLOPs of the sequence-mixing part of a layer (what is not a weight matmul).

    attention: QKᵀ and AV, 2·d FLOPs per (query, key) pair each; causal, so token i sees i keys
               and the average over a prefill of L tokens is (L + 1) / 2:  2·2·d·(L + 1)/2.
    mamba:     the selective scan, ~9·E·N per token (the Mamba paper's count: discretise A and B,
               update the state, read it out with C).
    mamba2:    the chunked SSD scan as the reference computes it (dense chunks of Q = chunk_size,
               ngroups = 1 broadcast to every head): per token 2·Q·N·H for C·Bᵀ, 2·Q·P·H for the
               masked (Q × Q) matrix times X, 2·N·P·H for the chunk states and 2·N·P·H for the
               state read-out, i.e. 2·(Q·(N + P)·H + 2·N·P·H). Inter-chunk passing is O(1/Q).
    swa:       as attention, over the keys in the window: token i sees min(i + 1, W) of them.
    s4d:       per channel, three real FFTs of length 2L (input, kernel, inverse; ~2.5·n·log2 n
               each, i.e. 5·log2(2L) per token) plus the spectral product, and building the
               kernel from N/2 complex modes (~4·N per position): E·(15·log2(2L) + 6 + 4·N).
    gated_deltanet: the chunked rule as the reference computes it (chunks of C = min(chunk_size,
               32), per head): K Kᵀ, Q Kᵀ and W_k (2·C·N each), W_v and the intra-chunk output
               (2·C·P each), the triangular inverse (~2·C²/3), and the state read / correction /
               write (2·N·P each): H·(2·C·(3N + 2P) + 2·C²/3 + 6·N·P).
    """
    if mixer == "attention":
        return 2.0 * 2.0 * cfg.d_model * (context_length + 1) / 2.0
    if mixer == "swa":
        W, L = cfg.window, context_length
        span = (L + 1) / 2.0 if L <= W else (W * (W + 1) / 2.0 + (L - W) * W) / L
        return 2.0 * 2.0 * cfg.d_model * span
    if mixer == "s4d":
        return cfg.d_inner * (15.0 * math.log2(2 * max(context_length, 1)) + 6 + 4 * cfg.d_state)
    if mixer == "gated_deltanet":
        from evalkit.models.native.gated_deltanet import MAX_CHUNK

        C, N, P = min(cfg.chunk_size, MAX_CHUNK), cfg.d_state, cfg.headdim
        H = cfg.d_inner // P
        return H * (2.0 * C * (3 * N + 2 * P) + 2.0 * C * C / 3 + 6.0 * N * P)
    if mixer == "mamba":
        return 9.0 * cfg.d_inner * cfg.d_state
    if mixer == "mamba2":
        Q, N, P = cfg.chunk_size, cfg.d_state, cfg.headdim
        H = cfg.d_inner // P
        return 2.0 * (Q * (N + P) * H + 2 * N * P * H)
    raise ValueError(f"no FLOPs formula for mixer '{mixer}'")


def analytic_flops_per_token(cfg: NativeConfig, context_length: int) -> float:
    """Forward FLOPs per token, averaged over a prefill of ``context_length`` tokens.

        2 · (non-embedding matmul weights: mixers, SwiGLU MLPs 3·D·d_ff)        weight matmuls
      + Σ_layers mixer_sequence_flops(L)                                       attention / scans
      + 2 · D · V                                                               output head

    (one multiply-add = 2 FLOPs). The embedding lookup, norms, activations, gating and RoPE are
    elementwise and not counted. Total prefill FLOPs ≈ L · this number; attention's term grows
    with L, so prefill is quadratic for attention layers and linear for SSM layers.
    """
    cfg = cfg.resolved()
    total = 0.0
    for mixer in cfg.layer_types():
        total += 2.0 * mixer_matmul_params(cfg, mixer) + mixer_sequence_flops(cfg, mixer, context_length)
        if cfg.d_ff:
            total += 2.0 * 3 * cfg.d_model * cfg.d_ff
    return total + 2.0 * cfg.d_model * cfg.vocab_size


# --------------------------------------------------------------------------- scaling fit
def scaling_exponent(lengths: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(length): cost ∝ length^slope.

    Attention's prefill approaches 2 once the L² term dominates; SSMs stay near 1 (fixed per-call
    overheads pull both below that at short lengths). NaN with fewer than two distinct lengths
    that have positive, finite times.
    """
    pts = [(math.log(L), math.log(s)) for L, s in zip(lengths, seconds)
           if L and s and L > 0 and s > 0 and math.isfinite(s)]
    if len({x for x, _ in pts}) < 2:
        return math.nan
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def fitted_exponent(rows: Sequence[dict[str, Any]]) -> float:
    """:func:`scaling_exponent` of the prefill latency over a sweep's ``ok`` rows."""
    ok = [r for r in rows if r["status"] == "ok"]
    return scaling_exponent([r["context_length"] for r in ok], [r["prefill_s"] for r in ok])


# --------------------------------------------------------------------------- devices, memory
def device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def device_name(device: str) -> str:
    """The GPU name on CUDA; on CPU the processor's model name (/proc/cpuinfo), else the
    platform's processor / machine string."""
    if device_kind(device) == "cuda":
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _CudaPeak:
    """Peak CUDA memory of a region: ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats`` — absolute (weights, inputs and every live tensor included), the
    number that decides whether a length fits. (``max_memory_reserved`` would add the caching
    allocator's slack on top; the store keeps the allocated peak only.)"""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.device = torch, torch.device(device)

    def start(self) -> None:
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return int(self.torch.cuda.max_memory_allocated(self.device))


class _CpuPeak:
    """Peak RSS *increase* of a region on the CPU.

    Linux keeps a resident-set high-water mark (``VmHWM`` in /proc/self/status). Writing ``5`` to
    /proc/self/clear_refs resets it to the current RSS, so ``VmHWM(after) − VmRSS(start)`` is this
    region's own peak growth. Where that reset is not allowed we fall back to
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a process-lifetime high-water mark: its delta
    only moves when a region exceeds every earlier peak of the process, so it is a lower bound
    (often 0 for the shorter lengths of a sweep). Either way it is a lower bound of the working
    set: memory that the allocator already holds from earlier work is reused without raising RSS.
    """

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.base = 0

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"{key} not in /proc/self/status")

    @staticmethod
    def _maxrss() -> int:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if platform.system() == "Darwin" else r * 1024  # bytes on macOS, KiB on Linux

    def start(self) -> None:
        gc.collect()
        if self.resettable and self._reset():
            self.base = self._status("VmRSS")
        else:
            self.resettable = False
            self.base = self._maxrss()

    def peak(self) -> int:
        now = self._status("VmHWM") if self.resettable else self._maxrss()
        return max(0, now - self.base)


# --------------------------------------------------------------------------- the target
@dataclass
class _Target:
    """What the probe needs from a model, however it was given."""

    prefill: Callable[[Any], tuple[Any, Any]]  # ids (B, L) → (logits_last (B, V), state)
    step: Callable[[Any, Any], tuple[Any, Any]]  # token (B,), state → (logits (B, V), state)
    cfg: NativeConfig | None
    info: dict[str, Any]
    max_context: int | None
    vocab_size: int
    model_id: str
    name: str


def _target(obj: Any, device: str) -> _Target:
    """An adapter with ``prefill`` / ``decode`` hooks, or a bare ``NativeLM`` (moved to ``device``)."""
    from evalkit.models.base import stable_hash

    if hasattr(obj, "spec") and hasattr(obj, "decode"):  # an adapter
        model = getattr(obj, "model", None)
        cfg = getattr(model, "cfg", None)
        info = obj.describe()
        return _Target(obj.prefill, obj.decode, cfg, info, type(obj).max_context(obj.spec),
                       int(info.get("vocab_size") or cfg.vocab_size), type(obj).identity(obj.spec), obj.spec.name)
    if hasattr(obj, "prefill") and hasattr(obj, "step") and hasattr(obj, "cfg"):  # a NativeLM
        model = obj.to(device).eval()
        cfg = model.cfg
        ident = stable_hash({"adapter": "native", "config": cfg.to_dict(), "weights": "in-memory"})[:16]
        return _Target(model.prefill, model.step, cfg, model.describe(), cfg.max_context, cfg.vocab_size,
                       ident, "native")
    raise TypeError(f"cannot probe {type(obj).__name__}: expected an adapter with prefill/decode "
                    "hooks or a NativeLM")


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the probe
def probe(
    target: Any,
    lengths: Sequence[int],
    device: str,
    repeats: int = 3,
    batch: int = 1,
    decode_tokens: int = 8,
    *,
    run_id: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure ``target`` (a loaded adapter, or a NativeLM) at each length; one row per length,
    in ascending order, with exactly the ``costs`` columns.

    Per length: inputs are seeded random token ids (B = ``batch``, L); one prefill is run first
    as warm-up and not timed; then ``repeats`` timed prefills (peak memory is the largest over
    them) and, continuing from the state the last prefill left, one warm-up and ``repeats``
    timed runs of ``decode_tokens`` greedy steps, all one sequence (so the cache holds L to
    L + (repeats + 1)·decode_tokens tokens, and no second copy of a million-token cache is ever
    held; near ``max_context`` the decode starts from a shorter prefill so that it stays within
    it). Medians are reported;
    ``decode_s_per_token`` is the latency of one step (which emits ``batch`` tokens).

    An adapter whose engine times itself in another process (vLLM) measures with its own
    ``probe_cost`` (same arguments, same rows).
    """
    if hasattr(target, "probe_cost"):
        return target.probe_cost(lengths, device, repeats=repeats, batch=batch, decode_tokens=decode_tokens,
                                 run_id=run_id, seed=seed)
    import torch

    t = _target(target, device)
    dev_kind, dev_name = device_kind(device), device_name(device)
    kv_per_token = int(t.info.get("kv_bytes_per_token") or 0)
    fixed = int(t.info.get("fixed_state_bytes") or 0)
    rows: list[dict[str, Any]] = []
    oom_at: int | None = None
    for L in sorted(set(int(x) for x in lengths)):
        row: dict[str, Any] = {k: None for k in COST_COLUMNS}
        flops = None
        if t.cfg is not None:
            try:
                flops = analytic_flops_per_token(t.cfg, L)
            except ValueError:  # a mixer with no formula: FLOPs unknown, the rest still measured
                flops = None
        row.update(model_id=t.model_id, model=t.name, device=dev_kind, device_name=dev_name,
                   context_length=L, batch=batch, kv_cache_bytes=batch * L * kv_per_token,
                   fixed_state_bytes=batch * fixed, flops_per_token=flops, repeats=repeats,
                   path=PATH_REFERENCE, model_info=t.info, run_id=run_id)
        if t.max_context is not None and L > t.max_context:
            row.update(status="too_long", error=f"context length {L} exceeds the model's max_context of {t.max_context}")
        elif oom_at is not None:
            row.update(status="oom", error=f"not tried: out of memory at {oom_at} tokens already")
        else:
            try:
                from evalkit.kernels.dispatch import kernel_calls, variant_calls

                before, variants_before = kernel_calls(), variant_calls()
                with torch.inference_mode():
                    row.update(_measure(t, L, device, repeats, batch, decode_tokens, seed))
                if kernel_calls() > before:
                    row["path"] = PATH_KERNEL
                ran = sorted(k for k, n in variant_calls().items() if n > variants_before.get(k, 0))
                if ran:  # which kernel variants the timed prefills and decodes launched
                    row["model_info"] = {**(t.info or {}), "kernel_variants": ran}
                row["status"] = "ok"
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001  (an OOM or a failure is a result; go on)
                oom = _is_oom(e)
                row.update(status="oom" if oom else "error", error=f"{type(e).__name__}: {e}"[:500])
                if oom:
                    oom_at = L
            if row["status"] != "ok":
                _release(device)  # outside the except block: its traceback no longer pins tensors
        row["measured_at"] = _now()
        rows.append(row)
    return rows


def _release(device: str) -> None:
    gc.collect()
    if device_kind(device) == "cuda":
        import torch

        torch.cuda.empty_cache()


def _measure(t: _Target, L: int, device: str, repeats: int, batch: int, decode_tokens: int,
             seed: int) -> dict[str, Any]:
    """The timed part of :func:`probe` for one length (runs under inference_mode)."""
    import torch

    cuda = device_kind(device) == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(torch.device(device))

    gen = torch.Generator().manual_seed(seed + L)
    ids = torch.randint(0, t.vocab_size, (batch, L), generator=gen).to(device)  # (B, L)
    mem = _CudaPeak(device) if cuda else _CpuPeak()

    # warm-up at this shape (allocator, kernel selection, lazy init): not timed
    logits, state = t.prefill(ids)
    sync()
    logits = state = None

    prefill_s: list[float] = []
    peak = 0
    for _ in range(repeats):
        logits = state = None  # the previous repeat's state is not part of this one's memory
        mem.start()
        t0 = time.perf_counter()
        logits, state = t.prefill(ids)
        sync()
        prefill_s.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak())

    steps = decode_tokens * (repeats + 1)  # a warm-up run, then the timed ones, all one sequence
    if t.max_context is not None and L + steps > t.max_context:
        start = max(1, t.max_context - steps)
        logits = state = None
        logits, state = t.prefill(ids[:, :start])  # decode must stay within max_context
    tok = logits.argmax(-1)  # (B,)
    logits = None
    decode_s: list[float] = []
    for r in range(repeats + 1):  # each run continues the sequence: no second copy of the cache
        sync()
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            lg, state = t.step(tok, state)
            tok = lg.argmax(-1)
        sync()
        if r:  # run 0 is the warm-up at this cache size
            decode_s.append((time.perf_counter() - t0) / decode_tokens)
    med = statistics.median(prefill_s)
    return {"prefill_s": med, "prefill_tokens_per_s": batch * L / med if med > 0 else None,
            "decode_s_per_token": statistics.median(decode_s), "peak_mem_bytes": int(peak)}


# --------------------------------------------------------------------------- store side
def missing_lengths(store: Store, model_id: str, device: str, lengths: Sequence[int], batch: int = 1) -> list[int]:
    """Lengths with no finished cost row (ok / oom / too_long) for this identity and device;
    ``error`` rows are retried."""
    name = device_name(device)
    done = {r["context_length"] for r in store.costs(
        f"WHERE model_id=? AND device_name=? AND batch=? AND status IN ({','.join('?' * len(DONE_STATUSES))})",
        (model_id, name, batch, *DONE_STATUSES))}
    return sorted({int(L) for L in lengths} - done)


def error_rows(model_id: str, name: str, device: str, lengths: Sequence[int], reason: str,
               batch: int = 1, run_id: str | None = None) -> list[dict[str, Any]]:
    """``error`` rows for lengths that could not be probed at all (e.g. the model did not load)."""
    out = []
    for L in sorted(set(lengths)):
        row: dict[str, Any] = {k: None for k in COST_COLUMNS}
        row.update(model_id=model_id, model=name, device=device_kind(device), device_name=device_name(device),
                   context_length=int(L), batch=batch, status="error", error=reason[:500],
                   path=PATH_REFERENCE, run_id=run_id, measured_at=_now())
        out.append(row)
    return out


def probe_into_store(store: Store, load: Callable[[], Any], model_id: str, name: str, lengths: Sequence[int],
                     device: str, *, run_id: str | None = None, repeats: int = 3, decode_tokens: int = 8,
                     adapter: Any = None) -> list[dict[str, Any]]:
    """Probe the lengths the store has no cost row for and store the rows; returns them.

    ``adapter`` is used when given (already loaded), else ``load()`` is called only if some
    length is missing. Nothing raised inside the probe escapes (but Ctrl-C): a failure becomes
    ``error`` rows with the reason, so the recall results of a run are never put at risk.
    """
    missing = missing_lengths(store, model_id, device, lengths)
    if not missing:
        return []
    try:
        rows = probe(adapter if adapter is not None else load(), missing, device, repeats=repeats,
                     decode_tokens=decode_tokens, run_id=run_id)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        rows = error_rows(model_id, name, device, missing, f"cost probe failed: {type(e).__name__}: {e}", run_id=run_id)
    for row in rows:
        store.write_cost(row)
    return rows
