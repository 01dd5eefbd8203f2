"""Reference SSD scan (Mamba-2), in plain PyTorch: the chunked algorithm of the Mamba-2 paper
(mamba_ssm's ``ssd_minimal.py``), plus a per-step loop used as ground truth by tests.

Per batch b and head h, with a scalar decay per head and step (the "state-space duality"):

    H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ      (P, N)        y_t = H_t C_t + D x_t      (P,)

Chunked: within a chunk the output is a masked (T, T) "attention" (C Bᵀ ∘ L) x with the decay
matrix L = exp(segsum(ΔA)); each chunk's end state is a decayed sum of its inputs; states pass
between chunks through a (chunks+1)² decay matrix; the entering state adds C·state per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: out[..., i, j] = x[..., j+1] + ... + x[..., i] for i >= j, -inf above.

    x: (..., T) → (..., T, T). exp(segsum(log a)) is the lower-triangular matrix of decay
    products; summing the masked copies (rather than differencing a cumsum) avoids cancellation.
    """
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # (..., T, T): x[..., i, j] = x_i
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~strict, 0)
    x_segsum = torch.cumsum(x, dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return x_segsum.masked_fill(~lower, -torch.inf)


def _flush(log_decay: torch.Tensor) -> torch.Tensor:
    """Send float32 log-decays below -46 (decay < 1e-20) to -inf, so exp gives exact zeros.

    Strong decays otherwise reach subnormal floats, which CPUs handle ~100x slower; a decay of
    1e-20 is invisible in an fp32 sum anyway. float64 is left exact.
    """
    if log_decay.dtype != torch.float32:
        return log_decay
    return log_decay.masked_fill(log_decay < -46.0, -torch.inf)


def ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan.

    x: (B, L, H, P); dt: (B, L, H), already biased and softplus-ed; A: (H,) (negative);
    B, C: (B, L, G, N) with H divisible by G; D: (H,); initial_state: (B, H, P, N).
    Returns y: (B, L, H, P) in x's dtype and, if ``return_final_state``, the state after the
    last step, (B, H, P, N) in the compute dtype (float32, or float64 for float64 inputs).
    Any L works: the tail is padded with dt = 0 (no decay, no input) and sliced off.
    """
    dtype_in = x.dtype
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    T = chunk_size
    x_in = x.to(ct)
    x, dt, A, B, C = x_in, dt.to(ct), A.to(ct), B.to(ct), C.to(ct)

    pad = (-L) % T
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    nc = (L + pad) // T

    X = (x * dt[..., None]).view(batch, nc, T, H, P)  # (B, c, T, H, P): inputs scaled by Δ
    Adt = (dt * A).view(batch, nc, T, H).permute(0, 3, 1, 2)  # (B, H, c, T)
    Bc = B.view(batch, nc, T, G, N).repeat_interleave(H // G, dim=3)  # (B, c, T, H, N)
    Cc = C.view(batch, nc, T, G, N).repeat_interleave(H // G, dim=3)  # (B, c, T, H, N)
    A_cs = torch.cumsum(Adt, dim=-1)  # (B, H, c, T)

    # 1. Within each chunk: y = ((C Bᵀ) ∘ L) X, a causal "attention" with decay mask L.
    Lmat = torch.exp(_flush(segsum(Adt)))  # (B, H, c, T, T)
    CB = torch.einsum("bclhn,bcshn->bchls", Cc, Bc)  # (B, c, H, T, T)
    M = CB * Lmat.permute(0, 2, 1, 3, 4)  # (B, c, H, T, T)
    Y_diag = torch.einsum("bchls,bcshp->bclhp", M, X)  # (B, c, T, H, P)

    # 2. Each chunk's end state from its own inputs, decayed to the chunk end.
    decay_states = torch.exp(A_cs[..., -1:] - A_cs)  # (B, H, c, T)
    Bdec = Bc * decay_states.permute(0, 2, 3, 1)[..., None]  # (B, c, T, H, N)
    states = torch.einsum("bclhn,bclhp->bchpn", Bdec, X)  # (B, c, H, P, N)

    # 3. Pass states between chunks: state entering chunk z = sum over earlier chunk ends.
    if initial_state is None:
        init = torch.zeros(batch, 1, H, P, N, dtype=ct, device=x.device)
    else:
        init = initial_state.to(ct)[:, None]
    states = torch.cat([init, states], dim=1)  # (B, c+1, H, P, N)
    decay_chunk = torch.exp(segsum(F.pad(A_cs[..., -1], (1, 0))))  # (B, H, c+1, c+1)
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)  # (B, c+1, H, P, N)
    states, final_state = new_states[:, :-1], new_states[:, -1]

    # 4. Contribution of the entering state to each position of the chunk.
    state_decay_out = torch.exp(A_cs).permute(0, 2, 3, 1)  # (B, c, T, H)
    Y_off = torch.einsum("bclhn,bchpn->bclhp", Cc, states) * state_decay_out[..., None]

    y = (Y_diag + Y_off).reshape(batch, nc * T, H, P)[:, :L]  # (B, L, H, P)
    if D is not None:
        y = y + x_in * D.to(ct)[:, None]
    out = y.to(dtype_in)
    return (out, final_state) if return_final_state else out


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSD recurrence as a per-step loop in float64: the ground truth for tests only.

    Same shapes as :func:`ssd_ref` (no chunk size); returns float64 tensors.
    """
    f64 = torch.float64
    x, dt, A, B, C = x.to(f64), dt.to(f64), A.to(f64), B.to(f64), C.to(f64)
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    B = B.repeat_interleave(H // G, dim=2)  # (B, L, H, N)
    C = C.repeat_interleave(H // G, dim=2)  # (B, L, H, N)
    h = (torch.zeros(batch, H, P, N, dtype=f64, device=x.device)
         if initial_state is None else initial_state.to(f64))  # (B, H, P, N)
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, t] * A)  # (B, H)
        dBx = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]  # (B, H, P, N)
        h = dA[..., None, None] * h + dBx
        ys.append((h @ C[:, t, :, :, None]).squeeze(-1))  # (B, H, P)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(batch, 0, H, P)  # (B, L, H, P)
    if D is not None:
        y = y + x * D.to(f64)[:, None]
    return (y, h) if return_final_state else y


def ssd_step_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the SSD recurrence, with the Mamba-2 mixer's Δ and gate fused in.

    state: (B, H, P, N) in float32 / float64 (the compute dtype); x, z: (B, H, P); dt: (B, H)
    (``dt_bias`` added and softplus applied here when given / asked); A, D, dt_bias: (H,);
    B, C: (B, G, N). Returns y · silu(z) (just y without z): (B, H, P) in x's dtype, and the new
    state (a new tensor; the input state is not modified).
    """
    ct = state.dtype
    H = x.shape[1]
    G = B.shape[1]
    d = dt.to(ct)
    if dt_bias is not None:
        d = d + dt_bias.to(ct)
    if dt_softplus:
        d = F.softplus(d)  # (B, H)
    Bh = B.to(ct).repeat_interleave(H // G, dim=1)  # (B, H, N)
    Ch = C.to(ct).repeat_interleave(H // G, dim=1)  # (B, H, N)
    x_c = x.to(ct)
    dA = torch.exp(d * A.to(ct))  # (B, H)
    h = dA[:, :, None, None] * state + (d[:, :, None] * x_c)[..., None] * Bh[:, :, None, :]
    y = (h @ Ch[..., None]).squeeze(-1)  # (B, H, P)
    if D is not None:
        y = y + D.to(ct)[:, None] * x_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype), h
