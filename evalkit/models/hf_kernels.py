"""Route transformers' Mamba-family mixers to evalkit's kernels: the hf adapter's ``kernels`` option.

How transformers picks a path (5.17 – 5.19, the same in both): each modeling module defines, at
module level, ``mamba_selective_scan`` / ``mamba_selective_state_update`` (Mamba-1 mixers: mamba,
falcon_mamba, jamba) or ``mamba2_chunk_scan`` / ``mamba2_selective_state_update`` (Mamba-2 mixers:
mamba2, zamba2, falcon_h1, bamba, nemotron_h, granitemoehybrid), each wrapped at import by
``use_kernel_func_from_hub_with_fallback``: mamba-ssm's function when ``mamba_ssm`` imports, else a
PyTorch fallback (Mamba-1's loops over tokens in Python; Mamba-2's materialises per-chunk (T × T)
products and runs out of memory at long context). The mixer's ``forward`` calls them by their
module-global names.

What :func:`route` does, reversibly and per model instance:

1. once per modeling module, each of those names is replaced by a *shim* with the same signature
   that runs evalkit's op (:mod:`evalkit.kernels`: Triton on CUDA, its PyTorch reference elsewhere,
   as ``EVALKIT_KERNELS`` says) while a routed mixer is running, and transformers' own function
   otherwise — with no routed mixer running the shim is a pass-through;
2. every mixer of the model whose ``forward`` calls those names gets a forward pre-hook that marks
   "routed" (a context variable) and a forward hook that clears it (also when the forward raises).

:func:`unroute` removes the hooks. Everything else in a mixer stays transformers' code: projections,
the causal depthwise conv (``F.conv1d`` / its decode update), padding masks, the B/C/Δ norms of
falcon_mamba and jamba, the gated RMSNorm, the cache updates — so each family keeps its exact
semantics and only the scan / SSD / decode step change. The shims follow mamba-ssm's signatures
(``selective_scan_fn``, ``mamba_chunk_scan_combined``, ``selective_state_update``): Δ bias,
softplus and Δ limits, the D skip, the z gate, groups, initial and final states, in-place state
update. Arguments the fallback ignores (``seq_idx``, ``cu_seqlens``) are ignored here too; a
decode step whose Δ / A / D vary along the head dimension (never the case for these mixers) goes
to transformers' function.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evalkit.errors import CheckpointError

if TYPE_CHECKING:
    import torch

MODES = ("auto", "evalkit", "transformers")
# model_type → the mixer kind whose ops evalkit routes (each family tested in tests/hf/test_hf_kernels.py)
FAMILIES = {"mamba": "mamba", "falcon_mamba": "mamba", "jamba": "mamba", "mamba2": "mamba2", "zamba2": "mamba2",
            "falcon_h1": "mamba2", "bamba": "mamba2", "nemotron_h": "mamba2", "granitemoehybrid": "mamba2"}
# kernel_path values (describe()): which implementation a model's Mamba mixers run
PATH_EVALKIT = "evalkit"  # evalkit.kernels (Triton on CUDA, the PyTorch reference elsewhere)
PATH_FALLBACK = "torch-fallback"  # transformers' PyTorch fallback
PATH_MAMBA_SSM = "mamba-ssm"  # transformers with mamba-ssm's kernels (installed)
SSD_CHUNK = 64  # the chunk the SSD kernels were tuned at (kernels/NOTES.md); it changes rounding only

_ROUTED: contextvars.ContextVar[bool] = contextvars.ContextVar("evalkit_hf_kernels_routed", default=False)
_calls = {"scan": 0, "ssd": 0, "step": 0}  # routed op calls, by op (tests and the GPU check read them)


# --------------------------------------------------------------------------- the ops, mamba-ssm signatures
def _vec(t: torch.Tensor | None) -> torch.Tensor | None:
    """Per-channel vectors (D, Δ bias) contiguous: the kernels index them without strides."""
    return None if t is None else t.contiguous()


def _selective_scan(original: Callable, hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                    B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                    delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                    return_last_state: bool = False, **_: Any) -> Any:
    """``selective_scan_fn``: hidden_states, dt, z (B, D, L); A (D, N); B, C (B, N, L); D, delta_bias
    (D,). Returns y (B, D, L) and, with ``return_last_state``, the final state (B, D, N) fp32."""
    from evalkit.kernels.selective_scan import selective_scan

    _calls["scan"] += 1
    return selective_scan(hidden_states, dt, A, B, C, D=_vec(D), z=z, delta_bias=_vec(delta_bias),
                          delta_softplus=delta_softplus, return_final_state=return_last_state)


def _chunk_scan(original: Callable, hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                B: torch.Tensor, C: torch.Tensor, chunk_size: int, D: torch.Tensor | None = None,
                z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                initial_states: torch.Tensor | None = None, seq_idx: Any = None, cu_seqlens: Any = None,
                dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf")),
                return_final_states: bool = False, **kwargs: Any) -> Any:
    """``mamba_chunk_scan_combined``: hidden_states (B, L, H, P); dt (B, L, H) before bias / softplus;
    A (H,); B, C (B, L, G, N); D (H,); z (B, L, H, P) gate; initial_states (B, H, P, N). Returns y
    (B, L, H, P) in hidden_states' dtype and, with ``return_final_states``, the final state fp32."""
    import torch.nn.functional as F

    from evalkit.kernels.ssd import ssd

    if D is not None and D.dim() != 1:  # per-channel D (H, P): not what these mixers pass
        return original(hidden_states, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                        initial_states=initial_states, dt_softplus=dt_softplus, dt_limit=dt_limit,
                        return_final_states=return_final_states, **kwargs)
    _calls["ssd"] += 1
    delta = dt.float()  # (B, L, H): bias, softplus and limits in fp32, as the kernel takes Δ ready
    if dt_bias is not None:
        delta = delta + dt_bias.float()
    if dt_softplus:
        delta = F.softplus(delta)
    delta = delta.clamp(min=dt_limit[0], max=dt_limit[1])  # as the fallback does (a no-op by default)
    chunk = min(SSD_CHUNK, chunk_size)
    y, final = ssd(hidden_states, delta, A.float().contiguous(), B, C, chunk, D=_vec(D),
                   initial_state=initial_states, return_final_state=True)
    if z is not None:
        y = (y.float() * F.silu(z.float())).to(y.dtype)
    y = y.contiguous()  # callers .view() it (FalconH1Mixer); a no-op for the kernel's output
    return (y, final) if return_final_states else y


def _head_values(t: torch.Tensor | None, lead: int) -> Any:
    """``t`` with its first ``lead`` dims kept and the rest dropped, when it is constant along the
    rest by construction (an ``expand``: stride 0, or size 1); False when it varies there."""
    if t is None or t.dim() == lead:
        return t
    if not all(t.stride(d) == 0 or t.shape[d] == 1 for d in range(lead, t.dim())):
        return False
    return t[(slice(None),) * lead + (0,) * (t.dim() - lead)]


def _state_update(original: Callable, state: torch.Tensor, hidden_states: torch.Tensor, dt: torch.Tensor,
                  A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                  z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
                  **kwargs: Any) -> torch.Tensor:
    """``selective_state_update``, one decode step, updating ``state`` in place. Mamba-1: state
    (B, D, N), hidden_states, dt, z (B, D), A (D, N), B, C (B, N). Mamba-2: state (B, H, P, N),
    hidden_states, z (B, H, P), dt (B, H, P), A (H, P, N), D, dt_bias (H, P), B, C (B, G, N) — Δ, A,
    D and the bias expanded along P (and N) from per-head values, else transformers' function runs."""
    from evalkit.kernels.selective_scan import selective_scan_step
    from evalkit.kernels.ssd import ssd_step

    s32 = state.float()  # the step kernels keep the state in fp32 (a no-op for transformers' fp32 cache)
    if state.dim() == 3:
        _calls["step"] += 1
        y, new = selective_scan_step(s32, hidden_states, dt, A, B, C, D=_vec(D), z=z, delta_bias=_vec(dt_bias),
                                     delta_softplus=dt_softplus)
    else:
        dt_h, A_h, D_h, bias_h = _head_values(dt, 2), _head_values(A, 1), _head_values(D, 1), _head_values(dt_bias, 1)
        if any(v is False for v in (dt_h, A_h, D_h, bias_h)):
            return original(state, hidden_states, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                            **kwargs)
        _calls["step"] += 1
        y, new = ssd_step(s32, hidden_states, dt_h, A_h.float().contiguous(), B, C, D=_vec(D_h), z=z,
                          dt_bias=_vec(bias_h), dt_softplus=dt_softplus)
    state.copy_(new)
    return y.contiguous()  # callers .view() it; a no-op for the kernels' output


# module-global name in transformers' modeling files → evalkit op with its signature
OPS: dict[str, Callable[..., Any]] = {
    "mamba_selective_scan": _selective_scan, "mamba_selective_state_update": _state_update,
    "mamba2_chunk_scan": _chunk_scan, "mamba2_selective_state_update": _state_update,
}


# --------------------------------------------------------------------------- shims and hooks
def _shim(original: Callable, op: Callable) -> Callable:
    @functools.wraps(original)
    def shim(*args: Any, **kwargs: Any) -> Any:
        if _ROUTED.get():
            return op(original, *args, **kwargs)
        return original(*args, **kwargs)

    shim.__evalkit_original__ = original  # type: ignore[attr-defined]
    return shim


def _original(fn: Callable) -> Callable:
    return getattr(fn, "__evalkit_original__", fn)


def _op_names(cls: type) -> tuple[dict[str, Any], list[str]]:
    """(module globals, routed op names) that ``cls.forward`` calls: a mixer has at least one."""
    fwd = inspect.unwrap(getattr(cls, "forward", None) or (lambda: None))
    code, glb = getattr(fwd, "__code__", None), getattr(fwd, "__globals__", {})
    if code is None:
        return glb, []
    return glb, [n for n in OPS if n in code.co_names and callable(glb.get(n))]


def _mixers(model: Any) -> list[tuple[Any, dict[str, Any], list[str]]]:
    out = []
    for m in model.modules():
        glb, names = _op_names(type(m))
        if names:
            out.append((m, glb, names))
    return out


def _transformers_path(fns: list[Callable]) -> str:
    """Which implementation transformers' wrapped functions call: mamba-ssm (any of them resolved
    to a non-fallback implementation at import) or the PyTorch fallback."""
    for fn in fns:
        try:
            if inspect.getclosurevars(_original(fn)).nonlocals.get("is_new_implementation"):
                return PATH_MAMBA_SSM
        except (TypeError, ValueError):  # not transformers' wrapper: count it as the fallback
            continue
    return PATH_FALLBACK


def _enter(module: Any, args: Any) -> None:
    module._evalkit_tokens.append(_ROUTED.set(True))


def _exit(module: Any, args: Any, output: Any) -> None:
    if module._evalkit_tokens:
        _ROUTED.reset(module._evalkit_tokens.pop())


def require_family(model_type: str, where: str = "") -> None:
    """CheckpointError unless evalkit routes ``model_type`` (``kernels: evalkit`` asks for it);
    ``where`` names the file the model type came from."""
    if model_type not in FAMILIES:
        raise CheckpointError(f"{where + ': ' if where else ''}option kernels: evalkit, but model_type "
                              f"'{model_type}' has no Mamba mixer evalkit routes (it routes: {', '.join(FAMILIES)})")


def is_routed(model: Any) -> bool:
    return any(getattr(m, "_evalkit_route", None) for m in model.modules())


def route(model: Any, mode: str, device: str) -> str | None:
    """Route ``model``'s Mamba mixers to evalkit's ops per ``mode`` and return its ``kernel_path``:

    - ``transformers``: leave transformers' own path;
    - ``evalkit``: route (any device; on CPU evalkit's dispatch runs its PyTorch reference unless
      ``EVALKIT_KERNELS=triton``); CheckpointError for a family evalkit does not route;
    - ``auto``: route on CUDA for a supported family when transformers would run its PyTorch
      fallback (with mamba-ssm installed transformers' path is already fast and is kept).

    Returns None for a model with no Mamba mixer (transformers, LFM2, …)."""
    if mode not in MODES:
        raise ValueError(f"kernels mode {mode!r} is not one of {', '.join(MODES)}")
    mt = getattr(model.config, "model_type", "?")
    mixers = _mixers(model)
    if mode == "evalkit":
        require_family(mt)
    if mode == "evalkit" and not mixers:
        import transformers

        raise CheckpointError(f"option kernels: evalkit, but no {mt} mixer in transformers {transformers.__version__} "
                              f"calls the functions evalkit replaces ({', '.join(OPS)})")
    if not mixers:
        return None
    if is_routed(model):
        return PATH_EVALKIT
    fallback = _transformers_path([glb[n] for _, glb, names in mixers for n in names])
    if mode == "transformers" or (mode == "auto" and (not str(device).startswith("cuda") or mt not in FAMILIES
                                                      or fallback == PATH_MAMBA_SSM)):
        return fallback
    for m, glb, names in mixers:
        for n in names:
            if not hasattr(glb[n], "__evalkit_original__"):
                glb[n] = _shim(glb[n], OPS[n])
        m._evalkit_tokens = []
        m._evalkit_route = (m.register_forward_pre_hook(_enter), m.register_forward_hook(_exit, always_call=True))
    return PATH_EVALKIT


def unroute(model: Any) -> None:
    """Undo :func:`route` for ``model``: its mixers run transformers' own functions again (the
    shims stay installed in the modeling modules, as pass-throughs for unrouted mixers)."""
    for m in model.modules():
        handles = getattr(m, "_evalkit_route", None)
        if handles:
            for h in handles:
                h.remove()
            m._evalkit_route = None


def routed_calls() -> dict[str, int]:
    """How many routed op calls ran so far in this process, by op (``scan``, ``ssd``, ``step``)."""
    return dict(_calls)
