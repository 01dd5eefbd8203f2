"""Reference gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks"), in plain
PyTorch: the chunked (WY / UT-transform) algorithm for training and prefill, the recurrence one
step at a time for decoding, and a per-step loop used as ground truth by tests.

Per batch b and head h, with a state S of shape (P, N) (value dim × key dim):

    S_t = α_t S_{t-1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ        o_t = S_t q_t            (P,)

α_t = exp(g_t) ∈ (0, 1] decays the whole state; the delta rule then replaces the value stored
under k_t by v_t, at rate β_t ∈ (0, 1). Equivalently, with u_t = β_t (v_t − α_t S_{t-1} k_t)
(the new value minus what the decayed state already returns for k_t):  S_t = α_t S_{t-1} + u_t k_tᵀ.

Chunked, per chunk of C steps entering with state S_0, with Γ_t = α_1 ⋯ α_t (within the chunk):

    S_t = Γ_t S_0 + Σ_{s≤t} (Γ_t / Γ_s) u_s k_sᵀ
    u_t = β_t v_t − β_t Γ_t S_0 k_t − Σ_{s<t} β_t (Γ_t / Γ_s)(k_tᵀ k_s) u_s

The last line is a unit lower-triangular system (I + A) U = diag(β) V − diag(βΓ) K S_0ᵀ, so
U = W_v − W_k S_0ᵀ with W_v = T diag(β) V and W_k = T diag(βΓ) K, T = (I + A)⁻¹ — one triangular
solve per chunk, independent of S_0, for all chunks at once (the UT transform). Only the pass of
S from chunk to chunk is sequential:

    O   = diag(Γ) Q S_0ᵀ + ((Q Kᵀ) ∘ M) U            M_ts = Γ_t / Γ_s for s ≤ t, else 0
    S_C = Γ_C S_0 + Uᵀ (diag(Γ_C / Γ) K)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _exp(log_x: torch.Tensor) -> torch.Tensor:
    """exp of a log-decay, with float32 values below -46 (decay < 1e-20) flushed to exact zeros:
    subnormal floats are ~100x slower on CPUs and invisible in an fp32 sum anyway."""
    if log_x.dtype == torch.float32:
        log_x = log_x.masked_fill(log_x < -46.0, -torch.inf)
    return torch.exp(log_x)


def _diagonal_blocks(A: torch.Tensor, size: int) -> torch.Tensor:
    """The (size × size) blocks on the diagonal of A: (..., C, C) → (..., C/size, size, size)."""
    n = A.shape[-1] // size
    blocks = A.reshape(*A.shape[:-2], n, size, n, size)
    return torch.diagonal(blocks, dim1=-4, dim2=-2).movedim(-1, -3)


def unit_lower_inverse(A: torch.Tensor, leaf: int = 8) -> torch.Tensor:
    """(I + A)⁻¹ for strictly lower-triangular A: (..., C, C) → (..., C, C).

    Forward substitution inverts the diagonal blocks of ``leaf`` rows; then blocks merge pairwise
    up to C with the inverse of a block lower-triangular matrix, [[T11, 0], [−T22 A21 T11, T22]].
    Only batched matmuls and elementwise ops: ``torch.linalg.solve_triangular`` on thousands of
    small matrices is as fast with one CPU thread but ~10x slower with two (per-matrix LAPACK
    calls). C that is not a power-of-two multiple of the leaf is padded with zeros (identity).
    """
    C = A.shape[-1]
    b = min(leaf, C)
    size = b
    while size < C:
        size *= 2
    if size != C:
        A = F.pad(A, (0, size - C, 0, size - C))
    D = _diagonal_blocks(A, b)  # (..., size/b, b, b)
    eye = torch.eye(b, dtype=A.dtype, device=A.device)
    rows = [eye[0].expand(D.shape[:-1])]
    for i in range(1, b):  # row i of the inverse: e_i − Σ_{j<i} A_ij row_j
        rows.append(eye[i] - (D[..., i, :i, None] * torch.stack(rows, dim=-2)).sum(-2))
    T = torch.stack(rows, dim=-2)  # (..., size/b, b, b): inverted diagonal blocks
    while b < size:
        A21 = _diagonal_blocks(A, 2 * b)[..., b:, :b]  # (..., size/2b, b, b)
        T11, T22 = T[..., 0::2, :, :], T[..., 1::2, :, :]
        T21 = -(T22 @ (A21 @ T11))
        T = torch.cat([torch.cat([T11, torch.zeros_like(T11)], -1), torch.cat([T21, T22], -1)], -2)
        b *= 2
    return T[..., 0, :C, :C]


def gated_delta_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule.

    q, k: (B, L, H, N) (normalised and scaled by the caller); v: (B, L, H, P); g: (B, L, H) log
    decays (<= 0); beta: (B, L, H); initial_state: (B, H, P, N). Returns o: (B, L, H, P) in v's
    dtype and, with ``return_final_state``, the state after the last step, (B, H, P, N) in the
    compute dtype (float32, or float64 for float64 inputs). Any L works: the tail is padded with
    β = 0 and g = 0 (the state passes through unchanged) and sliced off.
    """
    with torch.autocast(v.device.type, enabled=False):  # the inverse needs fp32, not bf16
        return _chunked(q, k, v, g, beta, chunk_size, initial_state, return_final_state)


def _chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
             chunk_size: int, initial_state: torch.Tensor | None, return_final_state: bool):
    """The body of :func:`gated_delta_ref` (same arguments and results)."""
    dtype_in = v.dtype
    ct = torch.float64 if v.dtype == torch.float64 else torch.float32
    Bsz, L, H, N = k.shape
    P = v.shape[-1]
    C = chunk_size
    pad = (-L) % C
    nc = (L + pad) // C

    def chunks(t: torch.Tensor) -> torch.Tensor:  # (B, L, H, ·) → (B, H, nc, C, ·)
        t = F.pad(t.to(ct), (0, 0, 0, 0, 0, pad))
        return t.view(Bsz, nc, C, H, -1).permute(0, 3, 1, 2, 4)

    Q, K, V = chunks(q), chunks(k), chunks(v)
    beta, g = chunks(beta[..., None])[..., 0], chunks(g[..., None])[..., 0]  # (B, H, nc, C)
    gc = torch.cumsum(g, dim=-1)  # log Γ_t within each chunk

    incl = torch.tril(torch.ones(C, C, dtype=torch.bool, device=k.device))  # s <= t
    strict = torch.tril(incl, diagonal=-1)  # s < t
    M = _exp((gc[..., :, None] - gc[..., None, :]).masked_fill(~incl, -torch.inf))  # (B, H, nc, C, C)

    # UT transform: T = (I + A)⁻¹, then W_v = T diag(β) V and W_k = T diag(βΓ) K, every chunk at once.
    A = (beta[..., :, None] * (K @ K.transpose(-1, -2)) * M).masked_fill(~strict, 0.0)
    T = unit_lower_inverse(A)  # (B, H, nc, C, C)
    W_v = T @ (beta[..., None] * V)  # (B, H, nc, C, P)
    W_k = T @ ((beta * _exp(gc))[..., None] * K)  # (B, H, nc, C, N)

    QK = (Q @ K.transpose(-1, -2)) * M  # (B, H, nc, C, C), zero above the diagonal
    Q_in = _exp(gc)[..., None] * Q  # Γ_t q_t: reads the entering state
    K_out = _exp(gc[..., -1:] - gc)[..., None] * K  # (Γ_C / Γ_s) k_s: writes the leaving state
    decay = _exp(gc[..., -1])  # (B, H, nc) Γ_C

    S = (torch.zeros(Bsz, H, P, N, dtype=ct, device=k.device) if initial_state is None
         else initial_state.to(ct))
    outs = []
    for c in range(nc):  # only the state passes sequentially between chunks
        U = W_v[:, :, c] - W_k[:, :, c] @ S.transpose(-1, -2)  # (B, H, C, P)
        outs.append(Q_in[:, :, c] @ S.transpose(-1, -2) + QK[:, :, c] @ U)  # (B, H, C, P)
        S = decay[:, :, c, None, None] * S + U.transpose(-1, -2) @ K_out[:, :, c]  # (B, H, P, N)
    o = torch.stack(outs, dim=2).permute(0, 2, 3, 1, 4).reshape(Bsz, nc * C, H, P)[:, :L]
    out = o.to(dtype_in)
    return (out, S) if return_final_state else out


def gated_delta_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence. q, k: (B, H, N); v: (B, H, P); g, beta: (B, H);
    state: (B, H, P, N). Returns o: (B, H, P) and the new state, both in the state's dtype."""
    ct = state.dtype
    q, k, v, g, beta = (t.to(ct) for t in (q, k, v, g, beta))
    S = torch.exp(g)[..., None, None] * state  # decay
    u = beta[..., None] * (v - (S @ k[..., None])[..., 0])  # (B, H, P): the correction
    S = S + u[..., None] * k[..., None, :]  # rank-one write u kᵀ
    return (S @ q[..., None])[..., 0], S


def gated_delta_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The recurrence as a per-step loop in float64, written literally as the paper's
    S_t = α_t S_{t-1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ (not through :func:`gated_delta_step`'s
    rank-one form), so tests check the algebra too. Ground truth for tests only.

    Same shapes as :func:`gated_delta_ref` (no chunk size); returns float64 tensors.
    """
    f64 = torch.float64
    q, k, v, g, beta = (t.to(f64) for t in (q, k, v, g, beta))
    Bsz, L, H, N = k.shape
    S = (torch.zeros(Bsz, H, v.shape[-1], N, dtype=f64, device=k.device)
         if initial_state is None else initial_state.to(f64))
    eye = torch.eye(N, dtype=f64, device=k.device)
    outs = []
    for t in range(L):
        kt, bt = k[:, t], beta[:, t, :, None, None]  # (B, H, N), (B, H, 1, 1)
        erase = eye - bt * kt[..., :, None] * kt[..., None, :]  # (B, H, N, N)
        S = torch.exp(g[:, t])[..., None, None] * S @ erase + bt * v[:, t, :, :, None] * kt[..., None, :]
        outs.append((S @ q[:, t, :, :, None])[..., 0])  # (B, H, P)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(Bsz, 0, H, v.shape[-1], dtype=f64)
    return (o, S) if return_final_state else o
