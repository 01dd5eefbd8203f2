"""The trainer: native models on a mixture of task plugins, scored the way ``evalkit run`` scores.

    train(model_spec, task_specs, TrainConfig, out_dir)  → TrainResult

What one run does:

- **Data.** Every step draws one batch of equal-length samples from one task spec (round-robin
  over the specs, or weighted with ``task_weights``); each sample picks one point of its spec's
  sweep axes. Samples come from the task plugin and the ``tokens`` format, exactly as in
  ``evalkit run``, but from a *separate seed namespace*: sample i of step s is seeded from
  ``H("train", seed, spec sample key, s, i)``, while evaluation samples are seeded from
  ``H(cell sample key, i)`` (``runner.make_sample``). The held-out set is therefore the very set
  that ``evalkit run`` evaluates at those lengths, and no training sample is drawn from it.
  With ``pool: N`` the batches come instead from a fixed training set of N samples per (spec,
  length), drawn from the same "train" namespace and built once (``evalkit.trainpool``): the way
  Zoology trains MQAR, and what keeps a GPU busy when sample generation (Python) would not.
- **Curriculum.** Context lengths are the specs' lengths up to ``max_length`` (plus
  ``max_length`` itself). The longest allowed length grows from the shortest to the longest over
  the first ``curriculum`` share of the run; each batch draws its length uniformly from the
  allowed ones, so short lengths stay in the mix. A batch holds ``batch_tokens // length``
  sequences.
- **Loss.** Cross-entropy on the answer tokens only (the positions ``scoring`` scores), plus
  ``all_token_weight`` × next-token cross-entropy over every position (0 by default: most
  tokens are random filler and cannot be predicted).
- **Optimiser.** AdamW (no decay on norms, biases and 1-d parameters), linear warm-up then cosine
  decay to ``min_lr_ratio × lr``, gradient clipping; bf16 autocast on CUDA, fp32 on CPU.
- **CUDA graphs.** On CUDA the whole step (forward, backward, clipping, AdamW) is captured as a
  CUDA graph per batch shape and replayed (``cuda_graph``; ``_GraphedStep``): the small native
  models' steps are bound by Python and kernel launches, not by the GPU (kernels/NOTES.md). Same
  math as the eager step; the loss then averages over answer positions by ``ignore_index`` rather
  than by a boolean index (which would need a host sync), so rounding differs slightly.
- **Evaluation.** Every ``eval_every`` steps and at the end: each spec at the current longest
  length, through ``scoring.predict_teacher_forced`` + ``scoring.score`` on ``runner.plan``'s
  cells. Early stop once every spec reaches ``target_acc`` at the final length.
- **Reproducible and resumable.** Weights come from ``NativeLM(cfg, seed)``, data from the step
  number, so the same config and seed give the same weights (on one device type). Every
  ``save_every`` steps ``trainer_state.pt`` (weights, optimiser, step, RNG, elapsed time) is
  written atomically; ``resume=True`` continues from it and gives the same final weights as an
  uninterrupted run. ``time_limit`` (seconds) makes the schedule follow
  max(step / steps, elapsed / time_limit): the run then ends on time with a full cosine decay,
  but is no longer bit-reproducible.

Outputs in ``out_dir``: ``config.json`` + ``model.safetensors`` (NativeLM.save_pretrained, in
``save_dtype``), ``train_log.jsonl`` (one ``start`` line, ``train`` lines, ``eval`` lines, one
``end`` line), ``card.md`` and ``trainer_state.pt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError, SpecError
from evalkit.models.base import stable_hash
from evalkit.spec import ModelSpec, TaskSpec

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
CARD_FILE = "card.md"
# bf16 dense matmul peak used for the model FLOP utilisation estimate: the H100 SXM datasheet
# figure (GPU-NOTES.md measured 717–798 TFLOP/s for a large bf16 matmul on ours).
PEAK_FLOPS = {"cuda": 989e12}


class TrainError(EvalkitError):
    """Bad training input: no native model, an unknown task, a non-positive number of steps."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that changes a training run's result (plus where progress goes)."""

    steps: int = 1000  # optimiser steps (the schedule's length)
    batch_tokens: int = 8192  # tokens per batch; sequences per batch = batch_tokens // length
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: float = 0.05  # share of the run spent warming up linearly
    weight_decay: float = 0.1  # AdamW decay on matrices (not on norms, biases, 1-d params)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # init seed and training-data namespace
    max_length: int | None = None  # longest training length; None = the specs' longest
    min_length: int | None = None  # drop spec lengths below this from the curriculum
    curriculum: float = 0.5  # share of the run over which the longest length grows to max
    task_weights: tuple[float, ...] | None = None  # None = round-robin over the task specs
    all_token_weight: float = 0.0  # weight of next-token CE on every position (besides answers)
    eval_every: int = 100  # steps between held-out evaluations
    eval_samples: int = 32  # held-out samples per task spec per evaluation
    target_acc: float | None = None  # stop once every spec reaches it at max length
    save_every: int = 100  # steps between trainer_state.pt checkpoints
    time_limit: float | None = None  # seconds; the schedule then follows wall time too
    save_dtype: str = "float32"  # dtype of model.safetensors: float32 | bfloat16
    pool: int = 0  # 0: fresh samples every step; N: a fixed training set of N samples per (spec, length)

    def validate(self) -> None:
        if self.steps < 1:
            raise TrainError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_tokens < 1:
            raise TrainError(f"--batch-tokens must be >= 1, got {self.batch_tokens}")
        if not self.lr > 0:
            raise TrainError(f"--lr must be > 0, got {self.lr}")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise TrainError(f"--target-acc must be in (0, 1], got {self.target_acc}")
        if self.eval_every < 1 or self.save_every < 1 or self.eval_samples < 1:
            raise TrainError("eval_every, save_every and eval_samples must be >= 1")
        if self.save_dtype not in ("float32", "bfloat16"):
            raise TrainError(f"save_dtype must be float32 or bfloat16, got '{self.save_dtype}'")
        if self.pool < 0:
            raise TrainError(f"pool must be >= 0 (0 = fresh samples every step), got {self.pool}")
        if not 0 <= self.curriculum <= 1 or not 0 <= self.warmup < 1:
            raise TrainError("curriculum must be in [0, 1] and warmup in [0, 1)")


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # steps actually run (fewer on early stop / time limit)
    stopped: str  # "steps" | "target_acc" | "time_limit"
    eval_acc: dict[str, float]  # last held-out accuracy per task spec
    wall_s: float
    tokens_per_s: float
    device: str
    device_name: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data
def curriculum_lengths(specs: Sequence[TaskSpec], cfg: TrainConfig, model_max: int) -> list[int]:
    """Sorted training lengths: every spec length within [min_length, max_length] (and
    max_length itself), capped by the model's max_context."""
    top = min(cfg.max_length or max(max(s.lengths) for s in specs), model_max)
    low = cfg.min_length or 1
    lengths = {n for s in specs for n in s.lengths if low <= n <= top} | {top}
    return sorted(lengths)


def _seed_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def train_batch(spec: TaskSpec, seed: int, step: int, length: int, n: int) -> list[Any]:
    """``n`` rendered training samples of ``spec`` at ``length`` for ``step``.

    Seeds live in the "train" namespace (see the module docstring), never in the evaluation
    one; each sample draws its sweep point from the same seed."""
    from evalkit.runner import _sample_key
    from evalkit.tasks import FORMATS, TASKS

    cls = TASKS.get(spec.task)
    points = spec.points()
    base = _sample_key(spec, {}, "tokens", 0, spec.seed)
    out = []
    for i in range(n):
        rng = np.random.default_rng(_seed_int("train", seed, base, step, i))
        point = points[int(rng.integers(len(points)))]
        sample = cls(cls.Params(**point)).sample(length, rng, i)
        out.append(FORMATS.get("tokens")(sample, length, filler=spec.filler, **spec.token_options()))
    return out


def _targets(batch: Sequence[Any]) -> tuple[Any, Any]:
    """input ids (B, L) and answer targets (B, L): targets[b, p - 1] = the gold answer token at
    p for every answer position p, -100 elsewhere (the token at p is predicted from position
    p - 1; with hidden answers the input at p is a placeholder, the target still the answer)."""
    import torch

    ids = torch.tensor([r.input_ids for r in batch], dtype=torch.long)  # (B, L)
    tgt = torch.full_like(ids, -100)
    for b, r in enumerate(batch):
        for (s, e), gold in zip(r.answer_spans, r.gold):
            tgt[b, s - 1 : e - 1] = torch.tensor(gold, dtype=torch.long)
    return ids, tgt


# --------------------------------------------------------------------------- schedule
def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the run, then cosine to ``min_lr_ratio × lr``."""
    if cfg.warmup > 0 and progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    t = min(1.0, (progress - cfg.warmup) / max(1e-9, 1 - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def max_length_at(progress: float, lengths: Sequence[int], cfg: TrainConfig) -> int:
    """The longest length allowed at ``progress``: grows one curriculum stage at a time."""
    if cfg.curriculum <= 0 or len(lengths) == 1:
        return lengths[-1]
    stage = int(progress / cfg.curriculum * len(lengths))
    return lengths[min(len(lengths) - 1, stage)]


# --------------------------------------------------------------------------- evaluation
class _ModelAdapter:
    """The in-training model behind the adapter interface ``scoring`` uses (predict only)."""

    def __init__(self, model: Any, device: str) -> None:
        self.model, self.device = model, device

    def predict(self, input_ids: Any, positions: Any) -> Any:
        import torch

        with torch.inference_mode(), _autocast(self.device):
            h = self.model.hidden(input_ids.to(self.device))  # (B, L, D)
            idx = positions.to(self.device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
            return self.model.head(torch.gather(h, 1, idx)).argmax(-1).cpu()  # (B, P)


def evaluate(model: Any, device: str, model_spec: ModelSpec, specs: Sequence[TaskSpec],
             length: int | Mapping[str, int], samples: int, batch_tokens: int,
             secondary: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Held-out whole-answer accuracy per task spec at ``length`` (one length, or one per spec
    name): ``samples`` samples spread over the spec's sweep points, taken from the same cells
    ``evalkit run`` would evaluate. When ``secondary`` is given it receives, per spec, the means
    of the task's teacher-forced secondary metrics (``query_acc``, ``digit_acc``): with many
    queries per sample, whole-answer accuracy stays at 0 long after single queries are learned."""
    from evalkit.runner import make_sample, plan, render
    from evalkit.scoring import predict_teacher_forced, score
    from evalkit.tasks import TASKS

    was_training = model.training
    model.eval()
    adapter = _ModelAdapter(model, device)
    out = {}
    for spec in specs:
        n = length if isinstance(length, int) else length[spec.name]
        cells = plan([spec], [model_spec], lengths=[n])
        per = math.ceil(samples / len(cells))
        rendered = [render(c, make_sample(c, i)) for c in cells for i in range(per)]
        bs = max(1, batch_tokens // n)
        right, sums = 0, dict.fromkeys(TASKS.get(spec.task).secondary, 0.0)
        for s in range(0, len(rendered), bs):
            chunk = rendered[s : s + bs]
            for r, p in zip(chunk, predict_teacher_forced(adapter, chunk)):
                ok, scores = score(r, p, TASKS.get(spec.task).secondary)
                right += ok
                for k in sums:
                    sums[k] += scores[k]
        out[spec.name] = right / len(rendered)
        if secondary is not None:
            secondary[spec.name] = {k: round(v / len(rendered), 4) for k, v in sums.items()}
    model.train(was_training)
    return out


def spec_lengths(spec: TaskSpec, lengths: Sequence[int]) -> list[int]:
    """The curriculum lengths at which every sweep point of ``spec`` fits (its needles and
    queries alone must not exceed the length): a short curriculum stage then trains the tasks
    that fit it and leaves out the rest, instead of failing the whole run."""
    from evalkit.tasks import FORMATS, TASKS

    cls = TASKS.get(spec.task)
    fits = []
    for n in lengths:
        try:
            for point in spec.points():
                sample = cls(cls.Params(**point)).sample(n, np.random.default_rng(0), 0)
                FORMATS.get("tokens")(sample, n, filler=spec.filler, **spec.token_options())
        except ValueError:
            continue
        fits.append(n)
    return fits


def _eval_lengths(fit: Mapping[str, Sequence[int]], top: int) -> dict[str, int]:
    """Per spec, the longest of its fitting training lengths up to ``top`` (else its shortest)."""
    return {name: max([n for n in ns if n <= top] or ns[:1]) for name, ns in fit.items()}


def _autocast(device: str) -> Any:
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the run
def check_inputs(model_spec: ModelSpec, specs: Sequence[TaskSpec], cfg: TrainConfig) -> None:
    cfg.validate()
    if model_spec.kind != "native":
        raise TrainError(f"model '{model_spec.name}' has kind '{model_spec.kind}'; only native models "
                         "can be trained")
    if not specs:
        raise TrainError("no task spec given (--task)")
    for s in specs:
        if (s.format or "tokens") != "tokens":
            raise TrainError(f"{s.path}: format '{s.format}' cannot train a native model (tokens only)")
    if cfg.task_weights is not None and (len(cfg.task_weights) != len(specs) or min(cfg.task_weights) < 0
                                          or sum(cfg.task_weights) <= 0):
        raise TrainError(f"task_weights needs {len(specs)} non-negative weights with a positive sum, "
                         f"got {list(cfg.task_weights)}")


def preflight(model_spec: ModelSpec, specs: Sequence[TaskSpec], cfg: TrainConfig
              ) -> tuple[list[int], dict[str, list[int]]]:
    """Every check a run makes before its first step (inputs, and that each task fits some
    curriculum length); returns the curriculum lengths and, per spec, those it fits. Cheap: a
    sweep checks all its variants with it before training the first."""
    from evalkit.models.native_adapter import NativeAdapter

    check_inputs(model_spec, specs, cfg)
    lengths = curriculum_lengths(specs, cfg, NativeAdapter.config(model_spec).max_context)
    fit = {s.name: spec_lengths(s, lengths) for s in specs}
    for s in specs:  # a task that fits none of the training lengths fails now, naming it
        if not fit[s.name]:
            try:
                train_batch(s, cfg.seed, 0, lengths[-1], 1)
            except ValueError as e:
                raise TrainError(f"{s.path}: training length {lengths[-1]}: {e}") from None
            raise TrainError(f"{s.path}: no training length in {lengths} fits every sweep point of this task")
    return lengths, fit


def train(
    model_spec: ModelSpec,
    specs: Sequence[TaskSpec],
    cfg: TrainConfig,
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    command: str | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
    pool_dir: str | Path | None = None,
    pool_workers: int = 1,
    cuda_graph: bool | None = None,
    compile: bool = False,
) -> TrainResult:
    """Train ``model_spec``'s architecture on ``specs``; write the checkpoint into ``out_dir``.

    ``progress(step, steps, info)`` is called after every step. ``stop_after`` ends the run
    after that many steps as an interruption would (state saved, no final checkpoint): for tests.
    With ``cfg.pool``, batches come from fixed training sets (``evalkit.trainpool``) built with
    ``pool_workers`` processes and cached in ``pool_dir`` (None: not cached). ``cuda_graph``:
    replay each step as a CUDA graph (None: on CUDA devices; True off CUDA is a TrainError).
    ``compile``: run the graphed step's model and loss under ``torch.compile`` (the scans stay
    outside it: ``evalkit.kernels.dispatch.opaque``); needs the CUDA graph.
    """
    import torch

    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.runner import resolve_device

    lengths, fit = preflight(model_spec, specs, cfg)
    device = resolve_device(device)
    if cuda_graph and not device.startswith("cuda"):
        raise TrainError(f"CUDA graphs need a CUDA device; this run trains on '{device}'")
    graphed = device.startswith("cuda") if cuda_graph is None else cuda_graph
    if compile and not graphed:
        raise TrainError("--compile needs the CUDA-graphed step (a CUDA device, without --no-cuda-graph)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ncfg = NativeAdapter.config(model_spec)

    pools = None
    if cfg.pool:  # the fixed training sets, built (or read from pool_dir) before the first step
        from evalkit.trainpool import Pools

        pools = Pools(cfg.pool, cfg.seed, device, pool_workers, pool_dir)
        pools.prepare(specs, fit)
    torch.manual_seed(cfg.seed)
    model = NativeLM(ncfg, seed=cfg.seed).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.betas, fused=device.startswith("cuda"), capturable=graphed)
    flags = {k: opt.param_groups[0][k] for k in ("fused", "capturable", "foreach")}
    step, elapsed0, tokens_done = 0, 0.0, 0
    state_path = out / STATE_FILE
    log_path = out / LOG_FILE
    if resume and state_path.is_file():
        st = _load_state(state_path, device)
        if st["train_config"] != _cfg_dict(cfg) or st["model_config"] != ncfg.to_dict():
            raise TrainError(f"{state_path}: saved state is from a different model or training config; "
                             "use another --out or drop --resume")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        _restore_flags(opt, flags)  # the state may come from a run with or without graphs
        torch.set_rng_state(st["torch_rng"])
        step, elapsed0, tokens_done = st["step"], st["elapsed"], st["tokens"]
        _truncate_log(log_path, step)
    else:
        log_path.write_text("")
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    _log(log_path, {"event": "start" if step == 0 else "resume", "step": step, "device": device,
                    "device_name": device_name, "command": command, "model": model_spec.name,
                    "model_config": ncfg.to_dict(), "tasks": [s.path for s in specs],
                    "train_config": _cfg_dict(cfg), "lengths": lengths, "torch": torch.__version__,
                    "params": sum(p.numel() for p in model.parameters()), "cuda_graph": graphed,
                    "compile": compile})
    stepper = _GraphedStep(model, opt, cfg, log_path, compile=compile) if graphed else None

    weights = None if cfg.task_weights is None else np.asarray(cfg.task_weights) / sum(cfg.task_weights)
    stopped, last_eval = "steps", {}
    last_secondary: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    model.train()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t0

    def prog(s: int) -> float:
        p = s / cfg.steps
        if cfg.time_limit:
            p = max(p, elapsed() / cfg.time_limit)
        return min(1.0, p)

    window_tokens, window_t = 0, time.perf_counter()
    while step < cfg.steps:
        p = prog(step)
        top = max_length_at(p, lengths, cfg)
        rng = np.random.default_rng(_seed_int("schedule", cfg.seed, step))
        k = step % len(specs) if weights is None else int(rng.choice(len(specs), p=weights))
        allowed = [n for n in fit[specs[k].name] if n <= top] or fit[specs[k].name][:1]
        length = allowed[int(rng.integers(len(allowed)))]
        if pools is not None:
            ids, tgt = pools.batch(specs[k], length, max(1, cfg.batch_tokens // length), rng)
        else:
            ids, tgt = _targets(train_batch(specs[k], cfg.seed, step, length, max(1, cfg.batch_tokens // length)))
            ids, tgt = ids.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        lr = lr_at(p, cfg)
        if stepper is not None:
            loss, gnorm = stepper(ids, tgt, lr, step)
        else:
            for g in opt.param_groups:
                g["lr"] = lr
            with _autocast(device):
                loss = _loss(model, ids, tgt, cfg.all_token_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
        step += 1
        tokens_done += ids.numel()
        window_tokens += ids.numel()
        info: dict[str, Any] = {"loss": None, "length": length, "task": specs[k].name}
        if step % 10 == 0 or step == cfg.steps or step % cfg.eval_every == 0:
            now = time.perf_counter()
            info["loss"] = float(loss.detach())
            _log(log_path, {"event": "train", "step": step, "loss": round(info["loss"], 5), "lr": lr,
                            "task": specs[k].name, "length": length, "batch": ids.shape[0],
                            "grad_norm": None if gnorm is None else round(float(gnorm), 4),
                            "tokens_per_s": round(window_tokens / max(1e-9, now - window_t)),
                            "wall_s": round(elapsed(), 2)})
            window_tokens, window_t = 0, now
        final_len = top == lengths[-1]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            at = _eval_lengths(fit, top)
            last_eval = evaluate(model, device, model_spec, specs, at, cfg.eval_samples, cfg.batch_tokens,
                                 last_secondary)
            _log(log_path, {"event": "eval", "step": step, "length": top, "acc": last_eval,
                            "mean_acc": sum(last_eval.values()) / len(last_eval), "secondary": last_secondary,
                            "lengths": at, "wall_s": round(elapsed(), 2)})
            info["eval"] = last_eval
            if cfg.target_acc is not None and final_len and min(last_eval.values()) >= cfg.target_acc:
                stopped = "target_acc"
        if cfg.time_limit and elapsed() >= cfg.time_limit and stopped == "steps":
            stopped = "time_limit"
        if step % cfg.save_every == 0 or stopped != "steps" or step == cfg.steps:
            _save_state(state_path, model, opt, step, elapsed(), tokens_done, cfg, ncfg)
        if progress:
            progress(step, cfg.steps, info)
        if stopped != "steps":
            break
        if stop_after is not None and step >= stop_after:
            _save_state(state_path, model, opt, step, elapsed(), tokens_done, cfg, ncfg)
            raise KeyboardInterrupt

    if step not in _eval_steps(log_path):
        at = _eval_lengths(fit, lengths[-1])
        last_eval = evaluate(model, device, model_spec, specs, at, cfg.eval_samples, cfg.batch_tokens,
                             last_secondary)
        _log(log_path, {"event": "eval", "step": step, "length": lengths[-1], "acc": last_eval,
                        "mean_acc": sum(last_eval.values()) / len(last_eval), "secondary": last_secondary,
                        "lengths": at, "wall_s": round(elapsed(), 2)})
    wall = elapsed()
    save_model(model, out, cfg.save_dtype)
    tps = tokens_done / max(1e-9, wall)
    from evalkit.cost import analytic_flops_per_token

    # training FLOPs ≈ 3 × forward (backward is twice the forward), at the longest length
    flops_tok = 3 * analytic_flops_per_token(ncfg, lengths[-1])
    peak = PEAK_FLOPS.get(device.split(":")[0])
    mfu = None if peak is None else flops_tok * tps / peak
    result = TrainResult(out, step, stopped, last_eval, wall, tps, device, device_name,
                         {"flops_per_token": flops_tok, "mfu": mfu, "lengths": lengths, "tokens": tokens_done,
                          "secondary": last_secondary, "eval_lengths": _eval_lengths(fit, lengths[-1])})
    _log(log_path, {"event": "end", "step": step, "stopped": stopped, "acc": last_eval, "secondary": last_secondary,
                    "wall_s": round(wall, 2),
                    "tokens": tokens_done, "tokens_per_s": round(tps), "train_flops_per_token": flops_tok,
                    "mfu": mfu, "device": device, "device_name": device_name})
    write_card(out, model_spec, specs, cfg, result, command)
    return result


class _GraphedStep:
    """The training step (forward, backward, gradient clipping, AdamW) as CUDA graphs, one per
    batch shape (sequences, length), each captured the first time its shape comes and replayed
    after that. Replaying launches the step's ~500-1,200 kernels without Python or per-launch CPU
    cost: the small zoo models' eager steps are bound by that cost (the GPU idles > 90 % of a
    step, kernels/NOTES.md v4), so the step runs several times faster, and the gain from the
    Triton kernels over the references shows in tokens/s instead of being hidden by launches.

    How (PyTorch's whole-network capture recipe): the learning rate is a device tensor the
    captured AdamW (fused, ``capturable``) reads, filled before each replay; the batch is copied
    into the shape's static input tensors; each graph owns its memory pool, its activations and
    its gradient tensors (captured with ``.grad`` unset, so replays write rather than accumulate).
    The first step runs eagerly (it creates AdamW's moment buffers outside any graph), and a new
    shape is warmed up by two forward-backward passes on a side stream (Triton compiles, cuBLAS
    picks its kernels) before capture; neither changes the weights. Autocast runs without its
    weight cache (a cached cast would be frozen into the graph). If a capture fails (an op that
    syncs with the host), the run logs why and continues eagerly.

    With ``compile`` the loss (the model's forward, and through AOTAutograd its backward) runs under
    ``torch.compile``: the norms, gates, projections' epilogues and casts around each scan fuse into
    a few Triton kernels; the scans themselves are graph breaks (``dispatch.opaque``). Compilation
    happens in the eager first step and the warm-up, never inside a capture."""

    WARMUP = 2

    def __init__(self, model: Any, opt: Any, cfg: TrainConfig, log_path: Path, compile: bool = False) -> None:
        import torch

        from evalkit.kernels import dispatch

        self.model, self.opt, self.cfg, self.log_path = model, opt, cfg, log_path
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.lr = torch.tensor(cfg.lr, dtype=torch.float32, device=self.params[0].device)
        for g in opt.param_groups:
            g["lr"] = self.lr
        self.graphs: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self.failed: str | None = None
        self.ready = False  # AdamW's buffers exist (after one eager step)
        self.loss_fn = _loss
        if compile:  # the PyTorch code around the scans fused by Inductor; the scans run as they are
            dispatch.prepare_compile()
            self.loss_fn = torch.compile(_loss)

    def _body(self, ids: Any, tgt: Any, update: bool = True) -> tuple[Any, Any]:
        import torch

        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = self.loss_fn(self.model, ids, tgt, self.cfg.all_token_weight, sync_free=True)
        loss.backward()
        if not update:
            return loss.detach(), None
        gnorm = (torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
                 if self.cfg.grad_clip > 0 else None)
        self.opt.step()
        # detached: a caller holding the loss must not keep this step's autograd graph alive (its
        # AccumulateGrad nodes, tied to the default stream, break the next shape's capture)
        return loss.detach(), gnorm

    def _capture(self, ids: Any, tgt: Any, step: int) -> tuple[Any, ...]:
        import torch

        t0 = time.perf_counter()
        s_ids, s_tgt = ids.clone(), tgt.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.opt.zero_grad(set_to_none=True)
                self._body(s_ids, s_tgt, update=False)
        torch.cuda.current_stream().wait_stream(side)
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, gnorm = self._body(s_ids, s_tgt)
        _log(self.log_path, {"event": "graph", "step": step, "shape": list(ids.shape),
                             "capture_s": round(time.perf_counter() - t0, 3)})
        return graph, s_ids, s_tgt, loss, gnorm

    def __call__(self, ids: Any, tgt: Any, lr: float, step: int) -> tuple[Any, Any]:
        import torch

        self.lr.fill_(lr)
        if self.failed is None and self.ready:
            key = tuple(ids.shape)
            if key not in self.graphs:
                try:
                    self.graphs[key] = self._capture(ids, tgt, step)
                except Exception as e:  # noqa: BLE001  (any capture failure: fall back to eager steps)
                    torch.cuda.synchronize()
                    self.graphs.clear()
                    self.failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                    _log(self.log_path, {"event": "graph", "step": step, "shape": list(ids.shape),
                                         "error": self.failed, "fallback": "eager"})
            if key in self.graphs:
                graph, s_ids, s_tgt, loss, gnorm = self.graphs[key]
                s_ids.copy_(ids, non_blocking=True)
                s_tgt.copy_(tgt, non_blocking=True)
                graph.replay()
                return loss, gnorm
        self.opt.zero_grad(set_to_none=True)  # eager: the first step, or after a failed capture
        try:
            out = self._body(ids, tgt)
        except Exception as e:  # noqa: BLE001  (torch.compile failing on a model: go on uncompiled)
            if self.loss_fn is _loss:
                raise
            _log(self.log_path, {"event": "compile", "step": step, "fallback": "uncompiled",
                                 "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"})
            self.loss_fn = _loss
            self.opt.zero_grad(set_to_none=True)  # nothing was stepped: the failure came before AdamW
            out = self._body(ids, tgt)
        self.ready = True
        return out


def _restore_flags(opt: Any, flags: Mapping[str, Any]) -> None:
    """After ``opt.load_state_dict``: this run's implementation flags (a loaded state carries its
    own run's, e.g. fused / capturable from a CUDA run resumed on a CPU), the step counters where
    a capturable optimiser needs them (on the parameters' device, float32)."""
    import torch

    for g in opt.param_groups:
        g.update(flags)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"] = float(g["lr"])
        for p in g["params"]:
            st = opt.state.get(p)
            if st and "step" in st and (flags.get("capturable") or flags.get("fused")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def _loss(model: Any, ids: Any, tgt: Any, all_token_weight: float, sync_free: bool = False) -> Any:
    """CE on answer positions (+ all_token_weight × CE on every next token). ``sync_free``: the
    head runs on every position and the mean skips non-answers by ``ignore_index`` (the same loss;
    no data-dependent shape, so no host sync, which a CUDA graph cannot hold); otherwise the head
    runs on the answer positions only (cheaper with a large vocabulary)."""
    import torch
    import torch.nn.functional as F

    h = model.hidden(ids)  # (B, L, D)
    if sync_free:
        loss = F.cross_entropy(model.head(h).reshape(-1, model.cfg.vocab_size).float(), tgt.reshape(-1),
                               ignore_index=-100)
    else:
        mask = tgt.reshape(-1) != -100
        hv = h.reshape(-1, h.shape[-1])
        loss = F.cross_entropy(model.head(hv[mask]).float(), tgt.reshape(-1)[mask])
    if all_token_weight > 0:
        # the next token, except at answers, whose target is the answer (a hidden answer's input
        # is a placeholder; a shown answer's is the answer itself, so this changes nothing there)
        nxt = torch.where(tgt[:, :-1] != -100, tgt[:, :-1], ids[:, 1:]).reshape(-1)
        lm = F.cross_entropy(model.head(h[:, :-1]).reshape(-1, model.cfg.vocab_size).float(), nxt)
        loss = loss + all_token_weight * lm
    return loss


def save_model(model: Any, out: Path, dtype: str) -> None:
    """config.json + model.safetensors in ``dtype`` (a bf16 copy leaves the trained model alone)."""
    import copy

    import torch

    m = copy.deepcopy(model).to("cpu")
    if dtype == "bfloat16":
        m = m.to(torch.bfloat16)
    m.save_pretrained(out)


# Fields added after checkpoints were trained: left out of the recipe identity while they hold
# their default, so every older recipe hash, card and trainer state keeps matching.
_LATER_TRAIN_FIELDS = {"pool": 0}


def _cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for k, default in _LATER_TRAIN_FIELDS.items():
        if d.get(k) == default:
            d.pop(k)
    return d


def _save_state(path: Path, model: Any, opt: Any, step: int, elapsed: float, tokens: int,
                cfg: TrainConfig, ncfg: Any) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    osd = opt.state_dict()
    for g in osd["param_groups"]:  # a graphed run's learning rate is a device tensor: store a number
        if isinstance(g["lr"], torch.Tensor):
            g["lr"] = float(g["lr"])
    torch.save({"model": model.state_dict(), "optimizer": osd, "step": step, "elapsed": elapsed,
                "tokens": tokens, "torch_rng": torch.get_rng_state(), "train_config": _cfg_dict(cfg),
                "model_config": ncfg.to_dict()}, tmp)
    os.replace(tmp, path)


_STATE_KEYS = ("model", "optimizer", "step", "elapsed", "tokens", "torch_rng", "train_config", "model_config")


def _load_state(path: Path, device: str) -> dict[str, Any]:
    """Read trainer_state.pt; a torn or foreign file is a TrainError naming it, never a traceback
    (``_save_state`` renames whole files into place, but a disk or a copy can still tear one)."""
    import torch

    try:
        st = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 (torch raises EOFError, RuntimeError, UnpicklingError, ...)
        why = (str(e).splitlines() or [""])[0].split(". ")[0] or type(e).__name__
        raise TrainError(f"{path}: unreadable trainer state ({why}); delete it to start over, "
                         "or use another --out") from None
    missing = [k for k in _STATE_KEYS if not isinstance(st, dict) or k not in st]
    if missing:
        raise TrainError(f"{path}: not an evalkit trainer state (no '{missing[0]}'); delete it to start over, "
                         "or use another --out")
    return st


def _log(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past the resumed step (they belong to the lost part of the run)."""
    if not path.is_file():
        return
    rows = [r for r in read_log(path) if r.get("step", 0) <= step and r["event"] != "end"]
    tmp = path.with_suffix(".tmp")  # renamed into place: a kill here never tears the log
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _eval_steps(path: Path) -> set[int]:
    return {r["step"] for r in read_log(path) if r["event"] == "eval"}


def recipe_hash(model_spec: ModelSpec, specs: Sequence[TaskSpec], cfg: TrainConfig) -> str:
    """Identity of architecture + training recipe (for caches of trained variants)."""
    from evalkit.models.native_adapter import NativeAdapter

    return stable_hash({"arch": NativeAdapter.config(model_spec).to_dict(), "train": _cfg_dict(cfg),
                        "tasks": [s.to_dict() | {"path": None} for s in specs]})[:16]


def write_card(out: Path, model_spec: ModelSpec, specs: Sequence[TaskSpec], cfg: TrainConfig,
               r: TrainResult, command: str | None) -> None:
    """A short model card: what was trained, how, on what, and how well (held-out)."""
    from evalkit.models.native.lm import NativeLM

    desc = NativeLM.from_pretrained(out).describe()
    at, sec = r.extra.get("eval_lengths", {}), r.extra.get("secondary", {})
    acc = "\n".join(f"| {k} | {at.get(k, r.extra['lengths'][-1])} | {v:.3f} | "
                    f"{', '.join(f'{m} {x:.3f}' for m, x in sec.get(k, {}).items()) or '-'} |"
                    for k, v in r.eval_acc.items())
    mfu = "n/a (CPU)" if r.extra["mfu"] is None else f"{100 * r.extra['mfu']:.3g}% of {PEAK_FLOPS['cuda'] / 1e12:.0f} TFLOP/s bf16"
    text = f"""# {model_spec.name}

{model_spec.description}

- architecture: {desc['layer_types']} (d_model {desc['d_model']}, d_state {desc['d_state']}, \
{desc['params']:,} parameters, attention layers {desc['attn_layer_idx']})
- trained with: `{command or '(python API)'}`
- model spec: `{model_spec.path}`; task specs: {', '.join(f'`{s.path}`' for s in specs)}
- recipe: {json.dumps(_cfg_dict(cfg))}
- curriculum lengths: {r.extra['lengths']}
- steps: {r.steps} of {cfg.steps} (stopped by: {r.stopped}); tokens: {r.extra['tokens']:,}
- device: {r.device} ({r.device_name}); wall time {r.wall_s:.1f} s; {r.tokens_per_s:,.0f} tokens/s
- model FLOP utilisation (3 × analytic forward FLOPs at the longest length × tokens/s): {mfu}
- weights: `model.safetensors` ({cfg.save_dtype}); log: `train_log.jsonl`

Held-out whole-answer accuracy (teacher-forced exact match, {cfg.eval_samples} samples per task, the
samples `evalkit run` uses at that length; training samples come from a separate seed namespace):

| task spec | length | accuracy | teacher-forced secondary metrics |
|---|---|---|---|
{acc}
"""
    (out / CARD_FILE).write_text(text)


# --------------------------------------------------------------------------- recipes
RECIPE_FIELDS = ("model", "tasks", "out", "device", "train", "description")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))  # the keys of a train: block


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A training recipe (``experiments/zoo/*.yaml``): ``model`` (spec), ``tasks`` (list of specs),
    ``out`` (checkpoint dir), ``train`` (TrainConfig fields). Paths are relative to the repo root
    (the working directory). Strict: unknown fields are an error naming the file."""
    import yaml

    p = Path(path)
    try:
        d = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{p}: cannot read recipe: {e}") from None
    if not isinstance(d, dict) or "model" not in d or "tasks" not in d:
        raise SpecError(f"{p}: a recipe needs the fields 'model' and 'tasks'")
    bad = sorted(set(d) - set(RECIPE_FIELDS))
    if bad:
        raise SpecError(f"{p}: unknown field '{bad[0]}' (expected: {', '.join(RECIPE_FIELDS)})")
    tr = d.get("train") or {}
    bad = sorted(set(tr) - set(TRAIN_FIELDS))
    if bad:
        raise SpecError(f"{p}: unknown field 'train.{bad[0]}' (expected: {', '.join(sorted(TRAIN_FIELDS))})")
    return {"model": str(d["model"]), "tasks": [str(t) for t in d["tasks"]], "out": d.get("out"),
            "device": d.get("device", "auto"), "train": tr}


def make_config(values: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from plain values (lists become tuples); a value of the wrong type is a
    TrainError naming the field (recipes and model specs' ``train:`` blocks come from YAML)."""
    for k, x in values.items():
        _check_type(k, x)
    v = {k: tuple(x) if isinstance(x, list) else x for k, x in values.items()}
    try:
        cfg = TrainConfig(**v)
    except TypeError as e:
        raise TrainError(str(e)) from None
    cfg.validate()
    return cfg


def _check_type(name: str, value: Any) -> None:
    """One TrainConfig value against its declared type (``int``, ``float | None``, ``tuple[float,
    ...] | None``, ...); unknown names are left to TrainConfig itself."""
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    if name not in types:
        return
    typ = types[name]
    if value is None:
        if "None" in typ:
            return
        raise TrainError(f"'{name}' must be {typ}, got null")
    base = typ.split("|")[0].strip()

    def number(x: Any, integer: bool = False) -> bool:
        return isinstance(x, (int,) if integer else (int, float)) and not isinstance(x, bool)

    if base.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(number(x) for x in value)
        ok = ok and ("..." in base or len(value) == base.count(",") + 1)  # betas: exactly two
    elif base == "int":
        ok = number(value, integer=True)
    elif base == "float":
        ok = number(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise TrainError(f"'{name}' must be {typ}, got {value!r}")
