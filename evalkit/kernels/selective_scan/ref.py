"""Reference selective scan (Mamba-1), in plain PyTorch.

The recurrence, per batch b, channel d and state index n:

    h_t = exp(Δ_t A) * h_{t-1} + Δ_t B_t u_t        y_t = <C_t, h_t> + D u_t,   y_t *= silu(z_t)

is linear in h, so it is an associative scan over pairs (a_t, b_t) = (exp(Δ_t A), Δ_t B_t u_t)
with (a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2). ``selective_scan_ref`` runs it without a Python
loop over time: inside each chunk of ``chunk_size`` steps a log-depth doubling (Hillis–Steele)
scan, all chunks at once; across chunks a loop that carries the state (one step per chunk).
Only products of decays in (0, 1] appear, never exp(-cumsum), so it is stable for any Δ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Target size (elements) of one (B, chunks, T, channels, N) working tensor. The full
# (B, L, D, N) tensor (1 GiB in fp32 for B=16, L=4096, D=256, N=16) is never materialised;
# ~4 MiB tiles stay in cache, which made the CPU path ~3x faster than 32 MiB ones.
_TILE_ELEMENTS = 1 << 20

# In float32, decay products below this are set to 0. Long chunks of strong decay otherwise
# reach subnormal floats, which CPUs handle ~100x slower (a Mamba layer went from 3 s to 60 s);
# a decay of 1e-20 is invisible next to any O(1e-7)-relative term of an fp32 sum anyway.
_FLUSH_BELOW = 1e-20


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _flush(a: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Zero float32 decays below _FLUSH_BELOW (float64 is left exact)."""
    if a.dtype != torch.float32:
        return a
    return F.threshold_(a, _FLUSH_BELOW, 0.0) if inplace else F.threshold(a, _FLUSH_BELOW, 0.0)


def _chunk_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of (a, b) pairs along dim 2 of (B, chunks, T, D, N) tensors, log2(T) steps.

    Returns (cumprod of a, scanned b): b_t = sum_{s<=t} (a_{s+1} ... a_t) b_s within each chunk.
    """
    T = a.shape[2]
    differentiable = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    s = 1
    while s < T:
        if differentiable:  # out of place, so autograd sees every intermediate
            b = torch.cat([b[:, :, :s], b[:, :, s:] + a[:, :, s:] * b[:, :, :-s]], dim=2)
            a = _flush(torch.cat([a[:, :, :s], a[:, :, s:] * a[:, :, :-s]], dim=2), inplace=False)
        else:  # in place: the right-hand side is materialised before the write
            b[:, :, s:] += a[:, :, s:] * b[:, :, :-s]
            a[:, :, s:] = a[:, :, s:] * a[:, :, :-s]
            _flush(a, inplace=True)
        s *= 2
    return a, b


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan, same semantics as mamba_ssm's ``selective_scan_ref``.

    u, delta: (B, D, L); A: (D, N); B, C: (B, N, L); D: (D,); z: (B, D, L); delta_bias: (D,);
    initial_state: (B, D, N). Returns y: (B, D, L) in u's dtype and, if ``return_final_state``,
    the state after the last step, (B, D, N) in the compute dtype (float32, or float64 for
    float64 inputs). Differentiable; runs on any device.
    """
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    batch, dim, L = u.shape
    N = A.shape[1]
    T = chunk_size

    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    u_c = u.to(ct)
    dt = delta.transpose(1, 2).contiguous()  # (B, L, D)
    du = (delta * u_c).transpose(1, 2).contiguous()  # (B, L, D)
    Bt = B.to(ct).transpose(1, 2).contiguous()  # (B, L, N)
    Ct = C.to(ct).transpose(1, 2).contiguous()  # (B, L, N)
    A = A.to(ct)

    # Pad to whole chunks with Δ = 0: a = 1, b = 0 leaves the state untouched.
    pad = (-L) % T
    if pad:
        dt, du, Bt, Ct = (F.pad(t, (0, 0, 0, pad)) for t in (dt, du, Bt, Ct))
    n_chunks = (L + pad) // T

    if initial_state is None:
        h_all = torch.zeros(batch, dim, N, dtype=ct, device=u.device)  # (B, D, N)
    else:
        h_all = initial_state.to(ct)
    differentiable = torch.is_grad_enabled() and any(
        t.requires_grad for t in (dt, du, A, Bt, Ct, h_all))

    # Tiles over channels and groups of chunks keep each (B, c, T, d, N) working tensor near
    # _TILE_ELEMENTS, small enough to stay in cache: channels are independent, chunks are not
    # (the state h is carried from one group to the next).
    d_blk = min(dim, max(1, _TILE_ELEMENTS // (batch * T * N)))
    group = max(1, _TILE_ELEMENTS // (batch * T * d_blk * N))
    y_blocks, h_blocks = [], []
    for d0 in range(0, dim, d_blk):
        ds = slice(d0, min(dim, d0 + d_blk))
        nd = ds.stop - ds.start
        h = h_all[:, ds]  # (B, d, N)
        y_groups = []
        for c0 in range(0, n_chunks, group):
            nc = min(group, n_chunks - c0)
            sl = slice(c0 * T, (c0 + nc) * T)
            a = _flush(torch.exp(dt[:, sl, ds, None] * A[ds]), not differentiable)  # (B, nc*T, d, N)
            b = du[:, sl, ds, None] * Bt[:, sl, None, :]  # (B, nc*T, d, N)
            a, b = _chunk_scan(a.view(batch, nc, T, nd, N), b.view(batch, nc, T, nd, N))
            # Carry the state across chunks: only the chunk ends are needed for that.
            starts = []
            for c in range(nc):
                starts.append(h)
                h = a[:, c, -1] * h + b[:, c, -1]  # (B, d, N)
            h0 = torch.stack(starts, dim=1)[:, :, None]  # (B, nc, 1, d, N), state entering each chunk
            hs = b + a * h0 if differentiable else b.addcmul_(a, h0)  # (B, nc, T, d, N)
            y = hs @ Ct[:, sl].reshape(batch, nc, T, N, 1)  # (B, nc, T, d, 1)
            y_groups.append(y.reshape(batch, nc * T, nd))
        y_blocks.append(torch.cat(y_groups, dim=1))
        h_blocks.append(h)
    y = torch.cat(y_blocks, dim=2)[:, :L].transpose(1, 2)  # (B, D, L)
    h = torch.cat(h_blocks, dim=1)  # (B, D, N)

    if D is not None:
        y = y + D.to(ct)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_final_state else out


def selective_scan_naive(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The recurrence as a per-time-step loop in float64: the ground truth for tests only.

    Same arguments and shapes as :func:`selective_scan_ref`; returns float64 tensors.
    """
    f64 = torch.float64
    delta = delta.to(f64)
    if delta_bias is not None:
        delta = delta + delta_bias.to(f64)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    u, A, B, C = u.to(f64), A.to(f64), B.to(f64), C.to(f64)
    batch, dim, L = u.shape
    h = (torch.zeros(batch, dim, A.shape[1], dtype=f64, device=u.device)
         if initial_state is None else initial_state.to(f64))  # (B, D, N)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        dBu = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]  # (B, D, N)
        h = dA * h + dBu
        ys.append((h * C[:, None, :, t]).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)  # (B, D, L)
    if D is not None:
        y = y + D.to(f64)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(f64))
    return (y, h) if return_final_state else y


def selective_scan_step_ref(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the selective scan: the recurrence above for a single time step.

    state: (B, D, N) in float32 / float64 (the compute dtype); u, delta, z: (B, D); A: (D, N);
    B, C: (B, N); D, delta_bias: (D,). Returns y: (B, D) in u's dtype and the new state (a new
    tensor; the input state is not modified).
    """
    ct = state.dtype
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)
    if delta_softplus:
        dt = F.softplus(dt)  # (B, D)
    u_c = u.to(ct)
    h = torch.exp(dt[:, :, None] * A.to(ct)) * state + (dt * u_c)[:, :, None] * B.to(ct)[:, None]
    y = (h @ C.to(ct)[:, :, None]).squeeze(-1)  # (B, D)
    if D is not None:
        y = y + D.to(ct) * u_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype), h
