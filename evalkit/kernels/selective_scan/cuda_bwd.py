"""Selective scan (Mamba-1) backward as a CUDA C++ kernel compiled at run time by NVRTC, in the layout
of the CUDA forward (``cuda.py``; kernels/NOTES.md v11).

The math is ``triton_bwd``'s (see its docstring): per (b, d, n), with a_t = exp(Δ_t A) and
b_t = Δ_t B_t u_t, the state h_t = a_t h_{t-1} + b_t is recomputed forwards and the state gradient
λ_t = gy_t C_t + a_{t+1} λ_{t+1} runs backwards; then gu = Δ Σ_n λ B + D gy,
gΔ = u Σ_n λ B + Σ_n λ A (h - b), gA = Σ_t Δ λ (h - b), gB = Σ_d λ Δ u, gC = Σ_d gy h.

Layout: one warp owns ``ROWS`` channels and walks the blocks of 32·K steps from the last to the
first; each lane owns K consecutive steps. Per block it reads u, Δ, the output gradient, z and the
pre-gate y (the gate's gradient gz is written at once), and the state entering the block, which the
training forward stored (``cuda.selective_scan_fwd_cuda_train`` with ``tb = 32·K``). Then for each
state index n in turn (a runtime loop, so the registers hold one state's values at a time):

1. the lane runs its K steps forwards from a zero state, and the reverse recurrence for λ backwards
   from a zero gradient; both lane totals go through one warp scan each (five shuffle rounds,
   interleaved), giving each lane its entering state and the gradient arriving from its right;
2. the lane reruns both recurrences from those true values (two passes instead of a fix-up: fewer
   registers) and accumulates Σ_n λ B and Σ_n λ A (h - b) for gu and gΔ in registers, gA's partial
   in shared memory, and its gB_n / gC_n partials (summed over its rows);
3. the block's warps reduce gB_n and gC_n over their channels in shared memory (by default one block
   barrier per two states, ``PAIRBAR``: four slot sets, both states of a pair reduced after its barrier;
   else double-buffered, one barrier per state) and add them to fp32 buffers with one atomic per (t, n)
   and block — so
   a block of ROWS·WARPS channels cuts the atomics by that factor against one per channel. With the
   16-byte option (the default) the slots are written and read as float4 chunks, swizzled so that no
   quarter-warp phase has a bank conflict either way, and added with 16-byte atomics
   (``red.global.add.v4.f32``) on sm_90 and newer where L % 4 == 0 (4-byte ones elsewhere; ``ATOM16``).

Options measured against the default (``_full``; kernels/NOTES.md v15): TSCAN runs step 1's 2·ROWS warp scans as
one transposed scan through a per-warp shared-memory buffer (13 % fewer instructions, but the B / C prefetch then
lands late: no faster so far); SBC stages B / C for the whole block in shared memory by cp.async a pair of states
ahead; SIN prefetches each lane's per-channel inputs for the next block the same way. SBC and SIN had not run on a
GPU when they were written (session 15).

The gradient of the state after the block for state n, ∂L/∂h_n, lives in lane n's register (N <= 32),
as the carry does in the forward. On inputs the CUDA forward does not take (``cuda.available`` false)
or where NVRTC refuses the module, the Triton time backward runs (``triton._SelectiveScanFn``).
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from evalkit.kernels.selective_scan import cuda as _cuda

# (steps per lane K, channels per warp ROWS, warps per block, 16-byte shared-memory slots and atomics, MINB,
# PAIRBAR): kernels/NOTES.md v11 (results-h200-v11.md run 2: 8.71 ms at 64k; 4-byte slots 9.83 ms, K 16 / ROWS 1
# 11.2-11.4 ms, 8 warps per block slower at every shape) and v14 (results-h200-v14.md runs 3-5: one barrier per
# two states 8.13 ms against 8.39 with one per state, 3.02x the 2.70 ms serial inference forward; register caps,
# fp32 B / C copies, window-sum scans, deferred reductions, 4 states per barrier and interleaved rows all slower).
BWD_CONFIG = (8, 2, 4, True, 1, True)

SOURCE = _cuda.HELPERS + r"""
#define LN2 0.6931471805599453f
constexpr int BLK = 32 * K;
constexpr int SLOT = BLK + K;  // one partial row of a block, one pad word per 32 (bank conflicts)
constexpr int NSETS = PAIRBAR ? 4 : 2;  // slot sets: double-buffered states, or pairs of states
constexpr int XS2 = TSCAN ? 2 * 2 * ROWS * 32 : 0;  // float2 per warp of the transposed scans' buffers
constexpr int SBC_F = SBC ? 8 * BLK * (int)sizeof(TBC) / 4 : 0;  // floats of the staged B / C (two pairs of states)
constexpr int SIN_B = SIN ? (HAS_Z ? 5 : 3) * ROWS * 32 * K * (int)sizeof(TU) : 0;  // bytes per SIN buffer and warp
static_assert((K & (K - 1)) == 0 && K <= 32 && BLK % (32 * WARPS) == 0, "K a power of two, 32·WARPS divides 32·K");
static_assert(!V4 || K % (2 * WARPS) == 0, "16-byte slots: each thread reduces whole chunks");
static_assert(!TSCAN || (ROWS & (ROWS - 1)) == 0 && ROWS <= 8, "transposed scans: 2·ROWS divides 32");

struct BArgs {
    const TU* u; const TU* dl; const float* A; const TBC* Bm; const TBC* Cm; const float* Dv; const TU* z;
    const float* bias; const float* st; const TU* yp; const TU* go; const float* gT;
    TU* gu; TU* gdl; TU* gz; float* gB; float* gC; float* gA; float* gD; float* gbias; float* gh0;
    int Dm, N; long long L; long long nch;
    long long sub, sud, sdb, sdd, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd, sgb, sgd;
};

__device__ __forceinline__ int padj(int j) { return j + (j >> 5); }

// The first pass of state n for one row: the decays av (kept for the second pass), the lane's state after its K
// steps from a zero state (hf) and its contribution to ∂L/∂(state before it) from a zero gradient (qr).
__device__ __forceinline__ void pass_zero(const float an, const TBC (&bq)[K], const TBC (&cq)[K], const float (&dlt)[K],
                                          const float (&dlu)[K], const float (&gyv)[K], float (&av)[K], float& hf,
                                          float& qr) {
    hf = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {  // forwards from a zero state
        av[k] = ex2(dlt[k] * an);
        hf = fmaf(av[k], hf, dlu[k] * f32_of(bq[k]));
    }
    float lam = 0.f;
#pragma unroll
    for (int k = K - 1; k >= 0; --k)  // backwards from a zero gradient: λ_k = gy C_k + a_k+1 λ_k+1
        lam = (k == K - 1) ? gyv[k] * f32_of(cq[k]) : fmaf(av[k + 1], lam, gyv[k] * f32_of(cq[k]));
    qr = av[0] * lam;
}

// The second pass for one row, from the true entering state hin and arriving gradient gin: accumulates S1, S2, the
// gB / gC partials, and returns gA's partial for this state.
__device__ __forceinline__ float pass_true(const float an, const float hin, const float gin, const TBC (&bq)[K],
                                           const TBC (&cq)[K], const float (&av)[K], const float (&dlt)[K],
                                           const float (&dlu)[K], const float (&gyv)[K], float (&S1)[K],
                                           float (&S2)[K], float (&gBp)[K], float (&gCp)[K]) {
    float hv[K];
    float h = hin;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        h = fmaf(av[k], h, dlu[k] * f32_of(bq[k]));  // (the compiler keeps Δu·B from the first pass)
        hv[k] = h;
        gCp[k] = fmaf(gyv[k], h, gCp[k]);
    }
    float gAl = 0.f;
    float lam = gin;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
        const float gyc = gyv[k] * f32_of(cq[k]);
        lam = (k == K - 1) ? lam + gyc : fmaf(av[k + 1], lam, gyc);
        gBp[k] = fmaf(lam, dlu[k], gBp[k]);
        S1[k] = fmaf(lam, f32_of(bq[k]), S1[k]);
        const float tt = lam * (av[k] * (k > 0 ? hv[k > 0 ? k - 1 : 0] : hin));  // λ a_t h_t-1 = λ (h - b)
        S2[k] = fmaf(an, tt, S2[k]);
        gAl = fmaf(dlt[k], tt, gAl);
    }
    return gAl;
}

#if TSCAN
// float2 position p (0..31) of one scan in the transposed-scan buffer: 16-byte units swizzled so that the group
// reads (E = 2·ROWS positions per lane) and the lanes' writes avoid bank conflicts at ROWS 2.
__device__ __forceinline__ int spos(int p) {
    int u = p >> 1;
    u ^= (u >> 3) & 1;
    return 2 * u + (p & 1);
}

// The 2·ROWS warp scans of one state (per row: the states forwards, the gradients backwards), transposed: each
// lane writes its (decay product, value) pair per scan into X — the backward scans in reversed lane order, so that
// all are prefix scans with one combine, (P, V) then (p, v) = (p·P, p·V + v) — then a group of M = 32 / (2·ROWS)
// lanes scans each: E = 2·ROWS positions serially per lane and log2(M) shuffle rounds across the group, and writes
// every position's exclusive prefix back. Two warp barriers, 2·log2(M) + 2 shuffles, instead of 4·ROWS rounds of
// 5 with 4 shuffles each.
__device__ __forceinline__ void group_scan(float2* __restrict__ X, int lane) {
    constexpr int G = 2 * ROWS, M = 32 / G, E = G;
    const int g = lane / M, i = lane - g * M;
    float2* mine = X + g * 32;
    float2 el[E];
#pragma unroll
    for (int v = 0; v < E / 2; ++v) {
        const float4 q = *reinterpret_cast<const float4*>(mine + spos(i * E + 2 * v));
        el[2 * v] = make_float2(q.x, q.y);
        el[2 * v + 1] = make_float2(q.z, q.w);
    }
    float P = el[0].x, V = el[0].y;
#pragma unroll
    for (int e = 1; e < E; ++e) { V = fmaf(el[e].x, V, el[e].y); P *= el[e].x; }
#pragma unroll
    for (int off = 1; off < M; off <<= 1) {
        const float P2 = __shfl_up_sync(0xffffffffu, P, off, M);
        const float V2 = __shfl_up_sync(0xffffffffu, V, off, M);
        if (i >= off) { V = fmaf(P, V2, V); P *= P2; }
    }
    float Pe = __shfl_up_sync(0xffffffffu, P, 1, M);
    float Ve = __shfl_up_sync(0xffffffffu, V, 1, M);
    if (i == 0) { Pe = 1.f; Ve = 0.f; }
#pragma unroll
    for (int v = 0; v < E / 2; ++v) {
        float4 q;
        q.x = Pe; q.y = Ve;
        Ve = fmaf(el[2 * v].x, Ve, el[2 * v].y); Pe *= el[2 * v].x;
        q.z = Pe; q.w = Ve;
        Ve = fmaf(el[2 * v + 1].x, Ve, el[2 * v + 1].y); Pe *= el[2 * v + 1].x;
        *reinterpret_cast<float4*>(mine + spos(i * E + 2 * v)) = q;
    }
}

// State n of one block for this warp's rows with the transposed scans (TSCAN): every row's first pass, one
// group_scan for all rows, then every row's second pass. X: this warp's scan buffer for this state's parity.
__device__ __forceinline__ void bwd_state(int n, int lane, const int N, const TBC (&bq)[K],
                                          const TBC (&cq)[K], const float (&a2)[ROWS], const float (&hblk)[ROWS],
                                          float (&Gc)[ROWS], const float (&dlt)[ROWS][K],
                                          const float (&dlu)[ROWS][K], const float (&gyv)[ROWS][K],
                                          const float (&sdt)[ROWS], float (&S1)[ROWS][K], float (&S2)[ROWS][K],
                                          float* __restrict__ sA, float (&gBp)[K], float (&gCp)[K],
                                          float2* __restrict__ X) {
    const unsigned FULL = 0xffffffffu;
#pragma unroll
    for (int k = 0; k < K; ++k) { gBp[k] = 0.f; gCp[k] = 0.f; }
    float an[ROWS], av[ROWS][K], pl[ROWS], ql[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        an[r] = __shfl_sync(FULL, a2[r], n);
        float hf;
        pass_zero(an[r], bq, cq, dlt[r], dlu[r], gyv[r], av[r], hf, ql[r]);
        pl[r] = ex2(sdt[r] * an[r]);  // the lane's decay product
        X[2 * r * 32 + spos(lane)] = make_float2(pl[r], hf);
        X[(2 * r + 1) * 32 + spos(31 - lane)] = make_float2(pl[r], ql[r]);
    }
    __syncwarp();
    group_scan(X, lane);
    __syncwarp();
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float hc = __shfl_sync(FULL, hblk[r], n);
        const float gc = __shfl_sync(FULL, Gc[r], n);
        const float2 ef = X[2 * r * 32 + spos(lane)];
        const float2 er = X[(2 * r + 1) * 32 + spos(31 - lane)];
        const float hin = fmaf(ef.x, hc, ef.y);  // the state entering this lane's steps
        const float gin = fmaf(er.x, gc, er.y);  // ∂L/∂h at this lane's last step, from the steps after it
        const float g0 = __shfl_sync(FULL, fmaf(pl[r], gin, ql[r]), 0);  // lane 0: ∂L/∂h_n before the block
        if (lane == n) Gc[r] = g0;
        sA[(r * N + n) * 32 + lane] += pass_true(an[r], hin, gin, bq, cq, av[r], dlt[r], dlu[r], gyv[r], S1[r],
                                                  S2[r], gBp, gCp);
    }
}
#else
// State n of one block for this warp's rows: recompute h and λ, accumulate the per-(t, d) sums over n
// (S1 = Σ λ B, S2 = Σ λ A (h - b), log2 units), gA's partial into sA, and the rows' gB / gC partials.
__device__ __forceinline__ void bwd_state(int n, int lane, const int N, const TBC (&bq)[K],
                                          const TBC (&cq)[K], const float (&a2)[ROWS], const float (&hblk)[ROWS],
                                          float (&Gc)[ROWS], const float (&dlt)[ROWS][K],
                                          const float (&dlu)[ROWS][K], const float (&gyv)[ROWS][K],
                                          const float (&sdt)[ROWS], float (&S1)[ROWS][K], float (&S2)[ROWS][K],
                                          float* __restrict__ sA, float (&gBp)[K], float (&gCp)[K], float2*) {
    const unsigned FULL = 0xffffffffu;
#pragma unroll
    for (int k = 0; k < K; ++k) { gBp[k] = 0.f; gCp[k] = 0.f; }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float an = __shfl_sync(FULL, a2[r], n);
        const float hc = __shfl_sync(FULL, hblk[r], n);
        const float gc = __shfl_sync(FULL, Gc[r], n);
        float av[K], hf, qr;
        pass_zero(an, bq, cq, dlt[r], dlu[r], gyv[r], av, hf, qr);
        float pf = ex2(sdt[r] * an), pr = pf;  // the lane's decay product
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {  // forward scan up, reverse scan down, interleaved
            const float p2 = __shfl_up_sync(FULL, pf, off);
            const float h2 = __shfl_up_sync(FULL, hf, off);
            const float p3 = __shfl_down_sync(FULL, pr, off);
            const float q3 = __shfl_down_sync(FULL, qr, off);
            if (lane >= off) { hf = fmaf(pf, h2, hf); pf *= p2; }
            if (lane + off < 32) { qr = fmaf(pr, q3, qr); pr *= p3; }
        }
        float pe = __shfl_up_sync(FULL, pf, 1);
        float he = __shfl_up_sync(FULL, hf, 1);
        if (lane == 0) { pe = 1.f; he = 0.f; }
        const float hin = fmaf(pe, hc, he);  // the state entering this lane's steps
        float pn = __shfl_down_sync(FULL, pr, 1);
        float qn = __shfl_down_sync(FULL, qr, 1);
        if (lane == 31) { pn = 1.f; qn = 0.f; }
        const float gin = fmaf(pn, gc, qn);  // ∂L/∂h at this lane's last step, from the steps after it
        const float p0 = __shfl_sync(FULL, pr, 0);
        const float q0 = __shfl_sync(FULL, qr, 0);
        if (lane == n) Gc[r] = fmaf(p0, gc, q0);  // ∂L/∂h_n before the block
        sA[(r * N + n) * 32 + lane] += pass_true(an, hin, gin, bq, cq, av, dlt[r], dlu[r], gyv[r], S1[r], S2[r],
                                                  gBp, gCp);
    }
}
#endif

// This warp's gB_m / gC_m partials (gBp, gCp: its lane's K steps, summed over its rows) into slot set `set`.
// 16-byte slots: chunk c (steps 4c..4c+3) at chunk position c ^ ((c >> 3) & 7), so that the 8 lanes of each
// quarter-warp phase hit distinct bank groups, writing (lane l: chunks l·K/4 + v) and reading (thread i: chunk
// i). 4-byte slots: a lane's K steps never cross a pad word (K is a power of two <= 32).
__device__ __forceinline__ void slot_write(float* __restrict__ slots, int set, int w, int lane, const float (&gBp)[K],
                                           const float (&gCp)[K]) {
#if V4
    float4* mine = reinterpret_cast<float4*>(slots + (set * WARPS + w) * 2 * SLOT);
#pragma unroll
    for (int v = 0; v < K / 4; ++v) {
        const int c = lane * (K / 4) + v;
        const int pc = c ^ ((c >> 3) & 7);
        mine[pc] = make_float4(gBp[4 * v], gBp[4 * v + 1], gBp[4 * v + 2], gBp[4 * v + 3]);
        mine[SLOT / 4 + pc] = make_float4(gCp[4 * v], gCp[4 * v + 1], gCp[4 * v + 2], gCp[4 * v + 3]);
    }
#else
    float* my = slots + (set * WARPS + w) * 2 * SLOT + padj(lane * K);
#pragma unroll
    for (int k = 0; k < K; ++k) {
        my[k] = gBp[k];
        my[SLOT + k] = gCp[k];
    }
#endif
}

// After a barrier: the block sums its warps' partials in slot set `set` and adds them to the gB / gC rows of
// this state at the block's first step (gBrow, gCrow) — one atomic per (t, n) and block, 16-byte ones on sm_90
// where L % 4 == 0. 4-byte slots: thread tid takes steps tid + i·32·WARPS, padded index padj(tid) + i·33·WARPS.
template <bool FULLV>
__device__ __forceinline__ void slot_reduce(const float* __restrict__ slots, int set, int tid, long long tb,
                                            long long L, float* gBrow, float* gCrow) {
#if V4
    const float4* base = reinterpret_cast<const float4*>(slots + set * WARPS * 2 * SLOT);
#pragma unroll
    for (int i = 0; i < K / (2 * WARPS); ++i) {
        const int j = tid + i * 32 * WARPS;  // chunk j of the gB (q 0) then gC (q 1) rows
        const int q = j / (BLK / 4), c = j - q * (BLK / 4);
        const int pc = c ^ ((c >> 3) & 7);
        float4 s = base[q * (SLOT / 4) + pc];
#pragma unroll
        for (int ww = 1; ww < WARPS; ++ww) {
            const float4 o = base[(ww * 2 + q) * (SLOT / 4) + pc];
            s.x += o.x; s.y += o.y; s.z += o.z; s.w += o.w;
        }
        float* dst = (q ? gCrow : gBrow) + 4 * c;
#if ATOM16
        if (FULLV && (L & 3) == 0) {  // 16-byte atomics are sm_90's (4-byte ones below elsewhere)
            red_add_v4(dst, s.x, s.y, s.z, s.w);
        } else
#endif
        {
            const float sv[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (tb + 4 * c + e < L) atomicAdd(dst + e, sv[e]);
        }
    }
#else
    const float* rd = slots + set * WARPS * 2 * SLOT + padj(tid);
    float* gBo = gBrow + tid;
    float* gCo = gCrow + tid;
#pragma unroll
    for (int i = 0; i < BLK / (32 * WARPS); ++i) {
        float sb = 0.f, sc = 0.f;
#pragma unroll
        for (int ww = 0; ww < WARPS; ++ww) {
            sb += rd[ww * 2 * SLOT + i * 33 * WARPS];
            sc += rd[(ww * 2 + 1) * SLOT + i * 33 * WARPS];
        }
        if (FULLV || tb + tid + i * 32 * WARPS < L) {
            atomicAdd(gBo + i * 32 * WARPS, sb);
            atomicAdd(gCo + i * 32 * WARPS, sc);
        }
    }
#endif
}

#if SBC
// B / C staged in shared memory for all the block's warps, a pair of states ahead, laid out [B_n, C_n, B_n+1,
// C_n+1][BLK] per pair buffer. Aligned blocks go by cp.async, 16-byte chunk i = tid + j·32·WARPS of the pair per
// thread (its source pointer kept and advanced by two rows per pair); the caller waits for them and passes a
// block barrier before any warp reads the buffer.
constexpr int SV = 16 / (int)sizeof(TBC), SCH = BLK / SV, SIT = (4 * SCH + 32 * WARPS - 1) / (32 * WARPS);

__device__ __forceinline__ void stage_setup(const TBC* Bb, const TBC* Cb, long long sbn, long long scn, long long tb,
                                            int tid, const TBC* (&src)[SIT], long long (&stp)[SIT]) {
#pragma unroll
    for (int j = 0; j < SIT; ++j) {
        const int i = tid + j * 32 * WARPS, row = i / SCH, c = i - row * SCH;
        src[j] = ((row & 1) ? Cb + (row >> 1) * scn : Bb + (row >> 1) * sbn) + tb + c * SV;
        stp[j] = 2 * ((row & 1) ? scn : sbn);
    }
}

__device__ __forceinline__ void stage_async(TBC* __restrict__ sb, const TBC* (&src)[SIT], const long long (&stp)[SIT],
                                            bool has1, int tid) {
    const unsigned base = shared_addr(sb);
#pragma unroll
    for (int j = 0; j < SIT; ++j) {
        const int i = tid + j * 32 * WARPS;
        if (i < (has1 ? 4 : 2) * SCH) cp_async16(base + 16 * i, src[j]);
        src[j] += stp[j];
    }
    cp_commit();
}

// The ragged (or unaligned) block: element by element, zeros past L and past N (rows n, n + 1 from Bn, Cn).
__device__ __forceinline__ void stage_plain(TBC* __restrict__ sb, const TBC* Bn, const TBC* Cn, long long sbn,
                                            long long scn, bool has1, long long tb, long long L, int tid) {
    for (int i = tid; i < 4 * BLK; i += 32 * WARPS) {
        const int row = i / BLK, t = i - row * BLK;
        const TBC* src = (row & 1) ? Cn + (row >> 1) * scn : Bn + (row >> 1) * sbn;
        sb[i] = (tb + t < L && (row < 2 || has1)) ? src[tb + t] : TBC{0};
    }
}

// This lane's K steps of the staged B and C rows of state s (0, 1) of the pair in sb.
__device__ __forceinline__ void read_staged(const TBC* __restrict__ sb, int s, int lane, TBC (&bq)[K],
                                            TBC (&cq)[K]) {
    typedef typename Run<TBC>::vec W;
    constexpr int V = Run<TBC>::V;
    const TBC* pb = sb + 2 * s * BLK + lane * K;
#pragma unroll
    for (int v = 0; v < K / V; ++v) {
        *reinterpret_cast<W*>(&bq[v * V]) = *reinterpret_cast<const W*>(pb + v * V);
        *reinterpret_cast<W*>(&cq[v * V]) = *reinterpret_cast<const W*>(pb + BLK + v * V);
    }
}
#endif

__device__ __forceinline__ void stage_wait() { cp_wait_all(); }

// A row's per-channel input a of this block: 0 u, 1 Δ, 2 the output gradient, 3 z, 4 the pre-gate y.
__device__ __forceinline__ const TU* in_row(const BArgs& g, long long b, long long d, int a) {
    switch (a) {
        case 0: return g.u + b * g.sub + d * g.sud;
        case 1: return g.dl + b * g.sdb + d * g.sdd;
        case 2: return g.go + b * g.sgb + d * g.sgd;
        case 3: return g.z + b * g.szb + d * g.szd;
        default: return g.yp + b * g.syb + d * g.syd;
    }
}

#if SIN
// The per-channel inputs of the next block, a lane's own K steps of each (NIN arrays × ROWS rows) by cp.async into
// its private runs of one of two buffers per warp, [array][row][lane][RUNB bytes]: issued at a block's start, read
// back at the next block's start and end (no barrier: each lane reads only what it copied).
constexpr int NIN = HAS_Z ? 5 : 3, RUNB = K * (int)sizeof(TU), SINB = NIN * ROWS * 32 * RUNB;
static_assert(RUNB % 16 == 0, "SIN: a lane's K steps of an input are whole 16-byte chunks");

__device__ __forceinline__ void prefetch_inputs(const BArgs& g, long long b, const long long (&dd)[ROWS],
                                                long long tn, int lane, char* __restrict__ dst) {
    const unsigned base = shared_addr(dst);
#pragma unroll
    for (int a = 0; a < NIN; ++a) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const char* src = reinterpret_cast<const char*>(in_row(g, b, dd[r], a) + tn);
#pragma unroll
            for (int v = 0; v < RUNB / 16; ++v)
                cp_async16(base + ((a * ROWS + r) * 32 + lane) * RUNB + 16 * v, src + 16 * v);
        }
    }
    cp_commit();
}
#endif

// Input a of row r for this lane's K steps: from the staged buffer stg where this block's were prefetched (SIN),
// else from global memory.
template <bool FULLV>
__device__ __forceinline__ void get_row(const BArgs& g, long long b, long long d, int a, int r, long long t0,
                                        const char* stg, int lane, TU (&q)[K]) {
#if SIN
    if (stg != nullptr) {
        const uint4* sp = reinterpret_cast<const uint4*>(stg + ((a * ROWS + r) * 32 + lane) * RUNB);
#pragma unroll
        for (int v = 0; v < RUNB / 16; ++v) *reinterpret_cast<uint4*>(&q[v * (16 / (int)sizeof(TU))]) = sp[v];
        return;
    }
#endif
    load_raw<FULLV>(in_row(g, b, d, a), t0, g.L, q);
}

// One block of 32·K steps (tb: its first step). FULLV: every step in range and 16-byte accesses.
template <bool FULLV>
__device__ __forceinline__ void bwd_block(const BArgs& g, long long b, long long blk, int lane, int w,
                                          const long long (&dd)[ROWS], const bool (&ok)[ROWS],
                                          const float (&a2)[ROWS], float (&Gc)[ROWS], const float (&dskip)[ROWS],
                                          const float (&dbias)[ROWS], float (&gDl)[ROWS], float (&gbl)[ROWS],
                                          float* __restrict__ slots, float* __restrict__ sA, float2* __restrict__ xs,
                                          TBC* __restrict__ sbc, char* __restrict__ xin, bool staged,
                                          float (&hnx)[ROWS], int& buf) {
    const long long L = g.L;
    const long long tb = blk * BLK;
    const long long t0 = tb + lane * K;
    const TBC* Bb = g.Bm + b * g.sbb;
    const TBC* Cb = g.Cm + b * g.scb;
    const int tid = threadIdx.x;
#if SIN  // this block's inputs were prefetched a block ago where staged (every aligned block but the last)
    const char* stg = staged ? xin + (blk & 1) * SINB : nullptr;
    if (staged) stage_wait();
#else
    const char* stg = nullptr;
#endif
#if SBC  // B / C through shared memory, a pair of states ahead: the first pair now, waited for after the loads below
    const TBC* ssrc[SIT];
    long long sstp[SIT];
    if (FULLV) {
        stage_setup(Bb, Cb, g.sbn, g.scn, tb, tid, ssrc, sstp);
        stage_async(sbc, ssrc, sstp, g.N > 1, tid);
    } else {
        stage_plain(sbc, Bb, Cb, g.sbn, g.scn, g.N > 1, tb, L, tid);
    }
#else
    TBC bq0[K], cq0[K], bq1[K], cq1[K];
    load_raw<FULLV>(Bb, t0, L, bq0);
    load_raw<FULLV>(Cb, t0, L, cq0);
#endif
#if SIN
    const bool pre = VEC && blk > 0;  // the next block (blk - 1) is whole: prefetch its inputs now
    if (pre) prefetch_inputs(g, b, dd, tb - BLK + lane * K, lane, xin + ((blk - 1) & 1) * SINB);
#endif
    float dlt[ROWS][K], dlu[ROWS][K], gyv[ROWS][K], S1[ROWS][K], S2[ROWS][K], sdt[ROWS], hblk[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        sdt[r] = 0.f;
#if SIN  // the state entering this block was loaded a block ago; load the next block's now
        hblk[r] = hnx[r];
        if (blk > 0) hnx[r] = lane < g.N ? g.st[((b * g.nch + blk - 1) * g.Dm + dd[r]) * g.N + lane] : 0.f;
#else
        hblk[r] = lane < g.N ? g.st[((b * g.nch + blk) * g.Dm + dd[r]) * g.N + lane] : 0.f;
#endif
        TU uq[K], xq[K], gq[K];
        get_row<FULLV>(g, b, dd[r], 0, r, t0, stg, lane, uq);
        get_row<FULLV>(g, b, dd[r], 1, r, t0, stg, lane, xq);
        get_row<FULLV>(g, b, dd[r], 2, r, t0, stg, lane, gq);
        float gzv[K];
        if (HAS_Z) {
            TU zq[K], yq[K];
            get_row<FULLV>(g, b, dd[r], 3, r, t0, stg, lane, zq);
            get_row<FULLV>(g, b, dd[r], 4, r, t0, stg, lane, yq);
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const float zz = f32_of(zq[k]), go = f32_of(gq[k]);
                const float sz = __fdividef(1.f, 1.f + __expf(-zz));
                gzv[k] = go * f32_of(yq[k]) * sz * fmaf(zz, 1.f - sz, 1.f);
                gyv[r][k] = go * zz * sz;
            }
            if (ok[r]) store_items<FULLV>(g.gz + (b * g.Dm + dd[r]) * L, t0, L, gzv);
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) gyv[r][k] = f32_of(gq[k]);
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const float uu = f32_of(uq[k]);
            const float x = f32_of(xq[k]) + dbias[r];
            float dt = x;
            if (SOFTPLUS) {
                const float e = __expf(x);
                const float wv = 1.f + e;
                const float lp = (wv == 1.f) ? e : __fdividef(__logf(wv) * e, wv - 1.f);
                dt = x > 20.f ? x : lp;
            }
            if (!FULLV) dt = (t0 + k < L) ? dt : 0.f;  // padded steps: decay 1, input 0
            if (!ok[r]) gyv[r][k] = 0.f;  // rows past D: no gradient flows (their partials stay zero)
            dlt[r][k] = dt;
            sdt[r] += dt;
            dlu[r][k] = ok[r] ? dt * uu : 0.f;
            gDl[r] = fmaf(gyv[r][k], uu, gDl[r]);
            S1[r][k] = 0.f;
            S2[r][k] = 0.f;
        }
    }
#if SBC  // the first pair's copies (not the inputs' prefetch, committed after them: it may stay in flight)
#if SIN
    if (FULLV) {
        if (pre) cp_wait_one();
        else stage_wait();
    }
#else
    if (FULLV) stage_wait();
#endif
    __syncthreads();
#endif
    // running pointers, advanced once per state (cheaper than rebuilding 64-bit addresses from n in the loop):
    // the next state's B / C rows (the prefetch), and this state's gB / gC rows at this block's first step
    const TBC* Bx = Bb + g.sbn;
    const TBC* Cx = Cb + g.scn;
    float* gBrow = g.gB + b * g.N * L + tb;
    float* gCrow = g.gC + b * g.N * L + tb;
    for (int n = 0; n < g.N; n += 2) {
        float gBp[K], gCp[K];
        const bool has1 = n + 1 < g.N;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int m = n + half;
            if (half == 1 && !has1) break;
#if SBC
            if (half == 0 && n + 2 < g.N) {  // the next pair into the other buffer (read before the last barrier)
                TBC* nb = sbc + (((n >> 1) & 1) ^ 1) * 4 * BLK;
                if (FULLV) stage_async(nb, ssrc, sstp, n + 3 < g.N, tid);
                else stage_plain(nb, Bx + g.sbn, Cx + g.scn, g.sbn, g.scn, n + 3 < g.N, tb, L, tid);
            }
            {
                TBC bq[K], cq[K];
                read_staged(sbc + ((n >> 1) & 1) * 4 * BLK, half, lane, bq, cq);
                bwd_state(m, lane, g.N, bq, cq, a2, hblk, Gc, dlt, dlu, gyv, sdt, S1, S2, sA, gBp, gCp,
                          xs + half * 2 * ROWS * 32);
                if (half == 1 || !has1) { Bx += 2 * g.sbn; Cx += 2 * g.scn; }
            }
#else
            if (half == 0) {
                if (has1) {
                    load_raw<FULLV>(Bx, t0, L, bq1);
                    load_raw<FULLV>(Cx, t0, L, cq1);
                    Bx += g.sbn;
                    Cx += g.scn;
                }
                bwd_state(m, lane, g.N, bq0, cq0, a2, hblk, Gc, dlt, dlu, gyv, sdt, S1, S2, sA, gBp, gCp, xs);
            } else {
                if (m + 1 < g.N) {
                    load_raw<FULLV>(Bx, t0, L, bq0);
                    load_raw<FULLV>(Cx, t0, L, cq0);
                    Bx += g.sbn;
                    Cx += g.scn;
                }
                bwd_state(m, lane, g.N, bq1, cq1, a2, hblk, Gc, dlt, dlu, gyv, sdt, S1, S2, sA, gBp, gCp,
                          xs + 2 * ROWS * 32);
            }
#endif
            slot_write(slots, PAIRBAR ? 2 * buf + half : buf, w, lane, gBp, gCp);
#if !PAIRBAR
            if (SBC && FULLV && (half == 1 || !has1)) stage_wait();  // the next pair's copies, before its barrier
            __syncthreads();
            slot_reduce<FULLV>(slots, buf, tid, tb, L, gBrow, gCrow);
            gBrow += L;
            gCrow += L;
            buf ^= 1;
#endif
        }
#if PAIRBAR  // one barrier for both states of the pair: four slot sets, the pair's two read after it
        if (SBC && FULLV) stage_wait();  // the next pair's copies, before the barrier after which they are read
        __syncthreads();
        slot_reduce<FULLV>(slots, 2 * buf, tid, tb, L, gBrow, gCrow);
        if (has1) slot_reduce<FULLV>(slots, 2 * buf + 1, tid, tb, L, gBrow + L, gCrow + L);
        gBrow += 2 * L;
        gCrow += 2 * L;
        buf ^= 1;
#endif
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        TU uq[K], xq[K];
        get_row<FULLV>(g, b, dd[r], 0, r, t0, stg, lane, uq);
        get_row<FULLV>(g, b, dd[r], 1, r, t0, stg, lane, xq);
        float guv[K], gdv[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const float uu = f32_of(uq[k]);
            guv[k] = fmaf(dlt[r][k], S1[r][k], HAS_D ? dskip[r] * gyv[r][k] : 0.f);
            float gd = fmaf(uu, S1[r][k], S2[r][k] * LN2);
            if (SOFTPLUS) gd *= __fdividef(1.f, 1.f + __expf(-(f32_of(xq[k]) + dbias[r])));
            if (!FULLV) gd = (t0 + k < L) ? gd : 0.f;
            gdv[k] = gd;
            gbl[r] += gd;
        }
        if (ok[r]) {
            store_items<FULLV>(g.gu + (b * g.Dm + dd[r]) * L, t0, L, guv);
            store_items<FULLV>(g.gdl + (b * g.Dm + dd[r]) * L, t0, L, gdv);
        }
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

#if MINB > 1  // a register cap: MINB blocks of 32·WARPS threads per SM
extern "C" __global__ void __launch_bounds__(32 * WARPS, MINB) evalkit_selective_scan_bwd(const BArgs g) {
#else
extern "C" __global__ void __launch_bounds__(32 * WARPS) evalkit_selective_scan_bwd(const BArgs g) {
#endif
    extern __shared__ __align__(16) float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long long b = blockIdx.y;
    const int d0 = (blockIdx.x * WARPS + w) * ROWS;
    // shared memory: the slot sets, the staged B / C (SBC), every warp's transposed-scan buffers (TSCAN), every
    // warp's gA partials, every warp's two input buffers (SIN)
    float* slots = smem;  // [NSETS slot sets][WARPS][gB, gC][SLOT]
    TBC* sbc = reinterpret_cast<TBC*>(smem + NSETS * WARPS * 2 * SLOT);  // SBC: [2 pairs][B, C, B, C][BLK]
    // this warp's: scan buffers ([state parity][2·ROWS scans][32] float2), gA partials, input buffers
    float2* xs = reinterpret_cast<float2*>(smem + NSETS * WARPS * 2 * SLOT + SBC_F) + w * XS2;
    float* sA = smem + NSETS * WARPS * 2 * SLOT + SBC_F + WARPS * 2 * XS2 + w * ROWS * g.N * 32;  // [ROWS][N][32]
    char* xin = reinterpret_cast<char*>(smem + NSETS * WARPS * 2 * SLOT + SBC_F + WARPS * 2 * XS2
                                        + WARPS * ROWS * g.N * 32) + w * 2 * SIN_B;
    for (int i = lane; i < ROWS * g.N * 32; i += 32) sA[i] = 0.f;
    float a2[ROWS], Gc[ROWS], dskip[ROWS], dbias[ROWS], gDl[ROWS], gbl[ROWS];
    bool ok[ROWS];
    long long dd[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        ok[r] = d0 + r < g.Dm;  // warps and rows past D run along for the barriers and store nothing
        dd[r] = ok[r] ? d0 + r : g.Dm - 1;
        a2[r] = lane < g.N ? g.A[dd[r] * g.sad + lane * g.san] * 1.4426950408889634f : 0.f;
        Gc[r] = (g.gT != nullptr && ok[r] && lane < g.N) ? g.gT[(b * g.Dm + dd[r]) * g.N + lane] : 0.f;
        dskip[r] = HAS_D ? g.Dv[dd[r]] : 0.f;
        dbias[r] = HAS_BIAS ? g.bias[dd[r]] : 0.f;
        gDl[r] = 0.f;
        gbl[r] = 0.f;
    }
    float hnx[ROWS];  // SIN: the state entering the next block, loaded a block ahead
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        hnx[r] = (SIN && lane < g.N) ? g.st[((b * g.nch + g.nch - 1) * g.Dm + dd[r]) * g.N + lane] : 0.f;
    int buf = 0;
    for (long long blk = g.nch - 1; blk >= 0; --blk) {
        const bool staged = SIN && VEC && blk < g.nch - 1;
        if (VEC && (blk + 1) * BLK <= g.L)
            bwd_block<true>(g, b, blk, lane, w, dd, ok, a2, Gc, dskip, dbias, gDl, gbl, slots, sA, xs, sbc, xin, staged,
                            hnx, buf);
        else
            bwd_block<false>(g, b, blk, lane, w, dd, ok, a2, Gc, dskip, dbias, gDl, gbl, slots, sA, xs, sbc, xin,
                             staged, hnx, buf);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float gd = warp_sum(gDl[r]), gbs = warp_sum(gbl[r]);
        for (int n = 0; n < g.N; ++n) {
            const float ga = warp_sum(sA[(r * g.N + n) * 32 + lane]);
            if (lane == 0 && ok[r]) g.gA[(b * g.Dm + dd[r]) * g.N + n] = ga;
        }
        if (!ok[r]) continue;
        if (lane < g.N) g.gh0[(b * g.Dm + dd[r]) * g.N + lane] = Gc[r];
        if (lane == 0) {
            if (HAS_D) g.gD[b * g.Dm + dd[r]] = gd;
            if (HAS_BIAS) g.gbias[b * g.Dm + dd[r]] = gbs;
        }
    }
}
"""


@functools.lru_cache(maxsize=256)  # one str object per specialisation: the module cache's key hashes once
def source(tu: torch.dtype, tbc: torch.dtype, K: int, rows: int, warps: int, v4: bool = False, minb: int = 1,
           pairbar: bool = False, tscan: bool = False, sbc: bool = False, sin: bool = False, *, has_d: bool,
           has_z: bool, has_bias: bool, softplus: bool, vec: bool = True, atom16: bool = True) -> str:
    """The backward's source for one specialisation (the compile-time constants as #defines).
    ``atom16``: the target has 16-byte atomics (sm_90 and newer; NVRTC refuses them below). Chosen from
    the device in Python: testing ``__CUDA_ARCH__`` in the source instead compiled to 255 registers and a
    15 % slower kernel under the H200's NVRTC 13.0 (249 with 12.9; kernels/NOTES.md v12)."""
    defs = dict(TU=_cuda._CODES[tu], TBC=_cuda._CODES[tbc], K=K, ROWS=rows, WARPS=warps, V4=int(v4), MINB=minb,
                PAIRBAR=int(pairbar), TSCAN=int(tscan), SBC=int(sbc),
                SIN=int(sin_on(sin, K, tu)),
                ATOM16=int(atom16),
                HAS_D=int(has_d), HAS_Z=int(has_z), HAS_BIAS=int(has_bias),
                SOFTPLUS=int(softplus), VEC=int(vec))
    return "".join(f"#define {k} {v}\n" for k, v in defs.items()) + SOURCE


def sin_on(sin: bool, K: int, tu: torch.dtype) -> bool:
    """SIN takes effect where a lane's K steps of an input are whole 16-byte chunks (cp.async's widest copy)."""
    return bool(sin) and K * tu.itemsize % 16 == 0


def store_tb(config: tuple | None = None) -> int:
    """The steps per stored state that this backward reads: one block of 32·K steps."""
    return 32 * (config or BWD_CONFIG)[0]


def enabled() -> bool:
    """``EVALKIT_SCAN_CUDA_BWD=0`` keeps the Triton time backward in training (for comparisons)."""
    return os.environ.get("EVALKIT_SCAN_CUDA_BWD", "1") != "0"


_DEFAULTS = (None, None, None, False, 1, False, False, False, False)


def _full(config: tuple | None) -> tuple[int, int, int, bool, int, bool, bool, bool, bool]:
    """A config with its options filled in: (K, ROWS, WARPS, V4, MINB, PAIRBAR, TSCAN, SBC, SIN).
    V4: 16-byte shared-memory slots and atomics; MINB asks the compiler for MINB resident blocks per SM (a register
    cap; 1: none; every cap tried was slower: kernels/NOTES.md v14); PAIRBAR: one block barrier per two states (four
    slot sets) instead of one per state; TSCAN: each state's 2·ROWS warp scans transposed through shared memory and
    done by groups of 32 / (2·ROWS) lanes (kernels/NOTES.md v15) instead of 4·ROWS five-round shuffle scans; SBC: B
    and C staged in shared memory by cp.async a pair of states ahead, once for all the block's warps, instead of
    each lane prefetching its own into registers; SIN: each lane's per-channel inputs (u, Δ, output gradient, z,
    pre-gate y) and entering state for the next block prefetched a block ahead, the inputs by cp.async into shared
    memory (where a lane's K steps are whole 16-byte chunks)."""
    c = tuple(config or BWD_CONFIG)
    return c + _DEFAULTS[len(c):]


def _shared_bytes(K: int, rows: int, warps: int, N: int, pairbar: bool = False, tscan: bool = False,
                  sbc: bool = False, bc_size: int = 2, sin: int = 0) -> int:
    """Dynamic shared memory: the slot sets, the staged B / C (SBC), the scan buffers (TSCAN), the gA partials and
    the inputs' prefetch buffers (``sin``: bytes per buffer and warp, 0 without SIN)."""
    xs = warps * 2 * 2 * rows * 32 * 2 if tscan else 0
    staged = 8 * 32 * K * bc_size // 4 if sbc else 0
    floats = (4 if pairbar else 2) * warps * 2 * (32 * K + K) + staged + xs + warps * rows * N * 32
    return 4 * floats + warps * 2 * sin


class _BArgs(ctypes.Structure):  # the kernel's ``struct BArgs``, passed by value
    _fields_ = ([(n, ctypes.c_void_p) for n in ("u", "dl", "A", "Bm", "Cm", "Dv", "z", "bias", "st", "yp", "go", "gT",
                                                 "gu", "gdl", "gz", "gB", "gC", "gA", "gD", "gbias", "gh0")]
                + [("Dm", ctypes.c_int), ("N", ctypes.c_int), ("L", ctypes.c_longlong), ("nch", ctypes.c_longlong)]
                + [(n, ctypes.c_longlong) for n in ("sub", "sud", "sdb", "sdd", "sad", "san", "sbb", "sbn", "scb",
                                                     "scn", "szb", "szd", "syb", "syd", "sgb", "sgd")])


def _src_for(u, delta, B, C, D, z, delta_bias, delta_softplus, ypre, config) -> tuple[str, bool]:
    """The source for these inputs and whether it takes 16-byte accesses: every row of u, delta, z, the
    pre-gate y, B and C 16-byte aligned (the output gradient is made so where it is not; the gradient
    buffers are fresh)."""
    K, rows, warps, v4, minb, pairbar, tscan, sbc, sin = _full(config)
    vec = _cuda._vec_ok(u.element_size(), u, delta, z, ypre) and _cuda._vec_ok(B.element_size(), B, C)
    atom16 = _cuda.capability(u.device) >= (9, 0)
    return source(u.dtype, B.dtype, K, rows, warps, v4, minb, pairbar, tscan, sbc, sin, has_d=D is not None,
                  has_z=z is not None, has_bias=delta_bias is not None, softplus=delta_softplus, vec=vec,
                  atom16=atom16), vec


def prepare(u, delta, B, C, D, z, delta_bias, delta_softplus, ypre, config=None) -> None:
    """Compile (or find) the backward for these inputs now, so that a module NVRTC or the driver refuses
    shows before the forward stores states for it (raises ``cuda.CompileError``)."""
    _cuda._function(u.device, _src_for(u, delta, B, C, D, z, delta_bias, delta_softplus, ypre, config)[0],
                    "evalkit_selective_scan_bwd")


def selective_scan_bwd_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, states: torch.Tensor, ypre: torch.Tensor | None,
    gy: torch.Tensor | None, gfinal: torch.Tensor | None, delta_softplus: bool = True,
    config: tuple | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) as ``triton_bwd.selective_scan_bwd``
    returns them. ``states``: (B, cdiv(L, 32·K), D, N) fp32 and ``ypre`` (with z) from
    ``cuda.selective_scan_fwd_cuda_train(..., tb=store_tb(config), ...)``; the inputs as
    ``cuda.available`` takes them."""
    from evalkit.kernels.selective_scan.triton_bwd import _grad_buffers, _grads_out

    K, rows, warps, _, _, pairbar, tscan, sbc, sin = _full(config)
    batch, Dm, L = u.shape
    N = A.shape[1]
    nch = -(-L // (32 * K))
    if states.shape != (batch, nch, Dm, N) or not states.is_contiguous():
        raise ValueError(f"states {tuple(states.shape)}: expected contiguous ({batch}, {nch}, {Dm}, {N}), the "
                         f"state entering every {32 * K} steps")
    if z is not None and (ypre is None or ypre.shape != u.shape):
        raise ValueError("the backward with z needs the pre-gate y")
    src, vec = _src_for(u, delta, B, C, D, z, delta_bias, delta_softplus, ypre, config)
    if gy is not None and (gy.dtype != u.dtype or gy.stride(-1) != 1
                           or (vec and not _cuda._vec_ok(u.element_size(), gy))):  # e.g. sum()'s expanded ones
        gy = gy.to(u.dtype, memory_format=torch.contiguous_format, copy=True)
    gy, gT, bufs = _grad_buffers(u, delta, A, D, z, delta_bias, gy, gfinal)
    gu, gdl, gz, gB, gC, gA, gD, gbias, gh0 = bufs
    A32 = A.to(torch.float32)
    D32 = D.to(torch.float32).contiguous() if D is not None else A32
    b32 = delta_bias.to(torch.float32).contiguous() if delta_bias is not None else A32
    zt = z if z is not None else u
    yp = ypre if ypre is not None else u
    f = _cuda._function(u.device, src, "evalkit_selective_scan_bwd")
    ptrs = [t.data_ptr() for t in (u, delta, A32, B, C, D32, zt, b32, states, yp, gy)]
    ptrs.append(gT.data_ptr() if gT is not None else None)
    ptrs += [t.data_ptr() for t in (gu, gdl, gz if gz is not None else gu, gB, gC, gA,
                                     gD if gD is not None else gA, gbias if gbias is not None else gA, gh0)]
    strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), A32.stride(0), A32.stride(1),
               B.stride(0), B.stride(1), C.stride(0), C.stride(1), zt.stride(0), zt.stride(1),
               yp.stride(0), yp.stride(1), gy.stride(0), gy.stride(1))
    args = _BArgs(*ptrs, Dm, N, L, nch, *strides)
    grid = (-(-Dm // (rows * warps)), batch, 1)
    _cuda.launch(f, u.device, grid, 32 * warps, args,
                 shared=_shared_bytes(K, rows, warps, N, pairbar, tscan, sbc, B.element_size(),
                                      (5 if z is not None else 3) * rows * 32 * K * u.element_size()
                                      if sin_on(sin, K, u.dtype) else 0))
    return _grads_out(bufs, A, B, C, D, delta_bias, initial_state)
