"""Selective scan (Mamba-1) forward, second CUDA C++ layout: the lanes split the *states* of a channel
and each lane walks time *serially* (kernels/NOTES.md v12).

Why: the time-parallel layout of ``cuda`` (each lane owns K consecutive steps, a warp scan joins the
lanes) pays, per (t, d, n) element, for the lane's recurrence from zero, its decay product, the fix-up
from the true entering state and a share of the shuffle scan: ≈ 12 instructions in its state loop plus
≈ 2.7 outside it, against one exponential; it runs at 3.0× the exp floor. A lane that walks time in
order needs none of that: per element it issues exp2(Δ·A_n), Δu·B_n, the recurrence's multiply-add and
C_n's multiply-add (5 instructions, one of them the exponential). The price is parallelism: a lane owns
S states of one channel, so a warp holds 32/Q channels (Q = N/S lanes per channel) and the grid has
D·Q/32 warps per sequence — 512 at d_inner 4096, N 16, S 4: about one warp per SM sub-partition, whose
latency the unrolled, independent exponentials of a block of K steps have to hide.

Per block of K steps, each warp:

1. writes the block's B and C (K·N values each, shared by its channels) into its shared memory, transposed
   to (step, state) so a lane reads its S states of one step in one vector load — 16-bit as they came
   (``BC16``, unpacked by the reader) or converted to fp32;
2. computes softplus(Δ + bias) and Δ·u for K/Q steps per lane (the channel's Q lanes split the steps)
   and shares them through shared memory;
3. walks the K steps: for each of its S states, a = exp2(Δ·A_n·log2 e), h = a·h + Δu·B_n, and the
   step's partial y += C_n·h;
4. sums the Q lanes' partial y of each step through shared memory (each lane sums its K/Q steps), adds
   the D skip, applies the SiLU(z) gate and stores its K/Q outputs.

With ``PIPE`` (the default) the loop is software-pipelined over two shared-memory buffers with one warp
barrier per block: block j + 1's steps 1–2 run beside block j's step 3, block j's step 4 after the
barrier, and block j + 2's raw inputs travel by cp.async into a third region meanwhile (a lane copies and
reads back only its own inputs). Nsight Compute showed why: prefetches into registers were sunk by the
compiler and arrived late, and three barriers per block serialised the steps (NOTES v12). What bounds it
now is one warp per SM sub-partition at the issue's shape and the shared-memory pipe: every (t, d, n)
element needs its B_n and C_n delivered to its lane. The ragged last block, unaligned rows and shapes
whose per-lane rows cp.async cannot copy run the same steps unpipelined.

The final state is written for decoding; with ``store_tb`` the state entering every ``store_tb`` steps
and the pre-gate y are stored as ``cuda.selective_scan_fwd_cuda_train`` stores them (for the CUDA and
Triton backwards). Inputs as ``cuda``'s (unit stride along L; fp32 / fp16 / bf16, B and C may differ
from u), and N = S·Q with Q a power of two ≤ 32 and Q | K; ``supports`` says whether a shape is taken.
"""

from __future__ import annotations

import functools
import os

import torch

from . import cuda

# (states per lane S, steps per block K, warps per block, software-pipelined, B and C kept 16-bit in shared
# memory when they come as fp16 / bf16): kernels/NOTES.md v12.
CONFIG = (4, 16, 4, True, True)

SOURCE = r"""
constexpr int Q = NN / S;        // lanes per channel
constexpr int CW = 32 / Q;       // channels per warp
constexpr int KQ = K / Q;        // steps per lane in the per-step work (loads, softplus, gate, store)
constexpr int SEG = 16 / sizeof(TBC);          // B / C steps per 16-byte load
constexpr int NSEG = NN * K / SEG;             // 16-byte pieces of one matrix per block
constexpr int SEGL = (NSEG + 31) / 32;         // per lane
constexpr int BROW = NN;                       // floats per step of the transposed B / C
constexpr int BSZ = K * NN + (K / 8) * 16;     // + 16 floats every 8 steps: no two-way conflict when writing
constexpr int YROW = K + 4;                    // partial-y row of one lane (padded)
constexpr int WSMEM = 2 * BSZ + 2 * CW * K + 32 * YROW;   // floats of one shared-memory buffer
// PIPE: the raw inputs of a block (each lane's B / C pieces, then its K/Q steps of u, Δ, z) are copied by
// cp.async into one of RSTAGES shared-memory stages, two blocks ahead; each lane reads back only what it
// copied. A stage is field-major and lane-contiguous (B pieces, C pieces, u, Δ, z, each 32 lanes in a
// row), so the copies and the read-backs move whole 128-byte wavefronts.
constexpr int RAW_BC = 2 * SEGL * 16;
constexpr int RAW_X = KQ * (int)sizeof(TU);
constexpr int RAW_LANE = RAW_BC + 3 * RAW_X;         // bytes of one lane's inputs
constexpr int RSTAGES = 3;
constexpr int RAW_WARP = 32 * RAW_LANE * RSTAGES;     // bytes per warp
// offsets (bytes) in a stage, for lane 0; lane l adds 16·l to the pieces and RAW_X·l to u, Δ, z
__device__ __forceinline__ constexpr int raw_b(int j) { return 32 * 16 * 2 * j; }
__device__ __forceinline__ constexpr int raw_c(int j) { return 32 * 16 * (2 * j + 1); }
__device__ __forceinline__ constexpr int raw_x(int f) { return 32 * RAW_BC + 32 * RAW_X * f; }

struct Args {
    const TU* u; const TU* dl; const float* A; const TBC* Bm; const TBC* Cm; const float* Dv; const TU* z;
    const float* bias; const float* h0; TU* y; float* hT; float* st; TU* yp;
    int Dm, N; long long L; long long nch;
    long long sub, sud, sdb, sdd, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd;
};

__device__ __forceinline__ int boff(int t) { return t * BROW + (t >> 3) * 16; }

// BC16: u16 offset of step t's row (NN B/C pairs, 4·NN bytes; + 64 bytes every 8 steps against conflicts)
__device__ __forceinline__ int boff16(int t) { return t * 2 * NN + (t >> 3) * 32; }

__device__ __forceinline__ float lo16(unsigned w, bf16_t*) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi16(unsigned w, bf16_t*) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ float lo16(unsigned w, f16_t*) { f16_t h; h.x = (u16)(w & 0xffffu); return f32_of(h); }
__device__ __forceinline__ float hi16(unsigned w, f16_t*) { f16_t h; h.x = (u16)(w >> 16); return f32_of(h); }
__device__ __forceinline__ float lo16(unsigned w, float*) { return 0.f; }  // (BC16 is never set for fp32 B, C)
__device__ __forceinline__ float hi16(unsigned w, float*) { return 0.f; }

// A lane's S B values and S C values of one step, 16-bit in shared memory (4·S bytes), to fp32.
__device__ __forceinline__ void unpack16(const u16* p, float (&bv)[S], float (&cv)[S]) {
    unsigned w[S];
    if constexpr (S % 4 == 0) {
#pragma unroll
        for (int i = 0; i < S / 4; ++i) {
            const uint4 t = reinterpret_cast<const uint4*>(p)[i];
            w[4 * i] = t.x; w[4 * i + 1] = t.y; w[4 * i + 2] = t.z; w[4 * i + 3] = t.w;
        }
    } else if constexpr (S % 2 == 0) {
        const uint2 t = *reinterpret_cast<const uint2*>(p);
        w[0] = t.x; w[1] = t.y;
    } else {
#pragma unroll
        for (int i = 0; i < S; ++i) w[i] = reinterpret_cast<const unsigned*>(p)[i];
    }
    const u16* e = reinterpret_cast<const u16*>(w);
#pragma unroll
    for (int s = 0; s < S; ++s) {
        if constexpr (S % 2 == 0) {
            const unsigned wb = w[s / 2], wc = w[S / 2 + s / 2];
            bv[s] = (s % 2) ? hi16(wb, (TBC*)nullptr) : lo16(wb, (TBC*)nullptr);
            cv[s] = (s % 2) ? hi16(wc, (TBC*)nullptr) : lo16(wc, (TBC*)nullptr);
        } else {
            bv[s] = lo16(e[s], (TBC*)nullptr);
            cv[s] = lo16(e[S + s], (TBC*)nullptr);
        }
    }
}

// M consecutive floats of shared memory in 16- or 8-byte pieces (p aligned to match)
template <int M>
__device__ __forceinline__ void lds(const float* p, float (&v)[M]) {
    if constexpr (M % 4 == 0) {
#pragma unroll
        for (int i = 0; i < M / 4; ++i) {
            const float4 t = reinterpret_cast<const float4*>(p)[i];
            v[4 * i] = t.x; v[4 * i + 1] = t.y; v[4 * i + 2] = t.z; v[4 * i + 3] = t.w;
        }
    } else if constexpr (M % 2 == 0) {
#pragma unroll
        for (int i = 0; i < M / 2; ++i) {
            const float2 t = reinterpret_cast<const float2*>(p)[i];
            v[2 * i] = t.x; v[2 * i + 1] = t.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < M; ++i) v[i] = p[i];
    }
}

template <int M>
__device__ __forceinline__ void sts(float* p, const float (&v)[M]) {
    if constexpr (M % 4 == 0) {
#pragma unroll
        for (int i = 0; i < M / 4; ++i)
            reinterpret_cast<float4*>(p)[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
    } else if constexpr (M % 2 == 0) {
#pragma unroll
        for (int i = 0; i < M / 2; ++i) reinterpret_cast<float2*>(p)[i] = make_float2(v[2 * i], v[2 * i + 1]);
    } else {
#pragma unroll
        for (int i = 0; i < M; ++i) p[i] = v[i];
    }
}

// One block's raw inputs for this lane, in registers.
struct Regs {  // (16-byte aligned members: they are filled and read through vector types)
    alignas(16) TBC bq[SEGL][SEG];
    alignas(16) TBC cq[SEGL][SEG];
    alignas(16) TU uq[KQ];
    alignas(16) TU xq[KQ];
    alignas(16) TU zq[KQ];
};

template <bool FULLV, typename T, int M>
__device__ __forceinline__ void load_run(const T* __restrict__ p, long long t0, long long L, T (&q)[M]) {
    constexpr int BYTES = M * sizeof(T);
    if (FULLV && BYTES % 16 == 0) {
#pragma unroll
        for (int v = 0; v < BYTES / 16; ++v)
            *reinterpret_cast<uint4*>(&q[v * (16 / sizeof(T))]) =
                __ldg(reinterpret_cast<const uint4*>(p + t0 + v * (16 / sizeof(T))));
    } else if (FULLV && BYTES == 8) {
        *reinterpret_cast<uint2*>(&q[0]) = __ldg(reinterpret_cast<const uint2*>(p + t0));
    } else if (FULLV && BYTES == 4) {
        *reinterpret_cast<unsigned*>(&q[0]) = __ldg(reinterpret_cast<const unsigned*>(p + t0));
    } else {
#pragma unroll
        for (int i = 0; i < M; ++i) {
            if (FULLV || t0 + i < L) q[i] = p[t0 + i]; else q[i] = T{0};
        }
    }
}

// This lane's row pointers, computed once: u, Δ, z at the lane's first step of a block (q·KQ), and the
// B / C rows of its 16-byte pieces at their first step (lanes past the NSEG pieces repeat piece 0 and
// convert nothing).
struct Ptrs {
    const TU* u; const TU* dl; const TU* z; const TBC* bp[SEGL]; const TBC* cp[SEGL]; int off[SEGL];
};

template <bool FULLV>
__device__ __forceinline__ void load_block(const Ptrs& p, long long L, long long t0, int q, Regs& r) {
    load_run<FULLV>(p.u, t0, L - q * KQ, r.uq);
    load_run<FULLV>(p.dl, t0, L - q * KQ, r.xq);
    if (HAS_Z) load_run<FULLV>(p.z, t0, L - q * KQ, r.zq);
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        load_run<FULLV>(p.bp[j], t0, L - p.off[j], r.bq[j]);
        load_run<FULLV>(p.cp[j], t0, L - p.off[j], r.cq[j]);
    }
}

// One block's per-lane values, computed from its raw inputs by arithmetic alone (``stage``): Δ after
// softplus and Δ·u of this lane's K/Q steps, u and z for the D skip and the gate, B and C (fp32, or as
// they came with BC16).
struct Staged {
    float dt[KQ], du[KQ], uu[KQ], zz[KQ];
#if BC16
    TBC bv[SEGL][SEG], cv[SEGL][SEG];  // BC16: B and C stay 16-bit until a lane reads them
#else
    float bv[SEGL][SEG], cv[SEGL][SEG];
#endif
};

template <bool FULLV>
__device__ __forceinline__ void stage(const Regs& r, long long t0, long long L, int q, float dbias, Staged& v) {
#pragma unroll
    for (int k = 0; k < KQ; ++k) {
        v.uu[k] = f32_of(r.uq[k]);
        if (HAS_Z) v.zz[k] = f32_of(r.zq[k]);
        const float x = f32_of(r.xq[k]) + dbias;
        float d = x;
        if (SOFTPLUS) {  // log1p(exp(x)) = ln(w)·e/(w − 1) with w = 1 + e (accurate for x << 0); x above 20
            const float e = ex2(x * 1.4426950408889634f);
            const float w = 1.f + e;
            const float lp = lg2(w) * (0.6931471805599453f * e) * rcp(w - 1.f);
            d = x > 20.f ? x : (w == 1.f ? e : lp);
        }
        if (!FULLV) d = (t0 + q * KQ + k < L) ? d : 0.f;  // padded steps: decay 1, input 0
        v.dt[k] = d;
        v.du[k] = d * v.uu[k];
    }
#pragma unroll
    for (int j = 0; j < SEGL; ++j)
#pragma unroll
        for (int e = 0; e < SEG; ++e) {
#if BC16
            v.bv[j][e] = r.bq[j][e]; v.cv[j][e] = r.cq[j][e];
#else
            v.bv[j][e] = f32_of(r.bq[j][e]); v.cv[j][e] = f32_of(r.cq[j][e]);
#endif
        }
}

// Shared memory of one buffer: B and C transposed to (step, state), Δ and Δ·u of the warp's channels,
// the partial y of each lane.
struct Buf {
    float* bs; float* cs; float* dls; float* dus; float* ys;
    __device__ __forceinline__ explicit Buf(float* sm)
        : bs(sm), cs(sm + BSZ), dls(sm + 2 * BSZ), dus(sm + 2 * BSZ + CW * K), ys(sm + 2 * BSZ + 2 * CW * K) {}
};

__device__ __forceinline__ void put(const Buf& m, const Staged& v, int lane, int c, int q) {
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        const int i = lane + 32 * j;
        if (NSEG % 32 == 0 || i < NSEG) {
            const int n = i / (K / SEG), part = i % (K / SEG);
#pragma unroll
            for (int e = 0; e < SEG; ++e) {
#if BC16  // step t's row: per state group [B of its S states, C of its S states], 16-bit
                u16* row = reinterpret_cast<u16*>(m.bs) + boff16(part * SEG + e);
                row[(n / S) * 2 * S + n % S] = v.bv[j][e].x;
                row[(n / S) * 2 * S + S + n % S] = v.cv[j][e].x;
#else
                m.bs[boff(part * SEG + e) + n] = v.bv[j][e];
                m.cs[boff(part * SEG + e) + n] = v.cv[j][e];
#endif
            }
        }
    }
    sts<KQ>(m.dls + c * K + q * KQ, v.dt);
    sts<KQ>(m.dus + c * K + q * KQ, v.du);
}

// The K steps in order, S states each; this lane's partial y of each step into m.ys.
__device__ __forceinline__ void recur(const Buf& m, int lane, int c, int q, const float (&a2)[S], float (&h)[S]) {
    float yp[K], dlv[K], duv[K];
    lds<K>(m.dls + c * K, dlv);
    lds<K>(m.dus + c * K, duv);
    const int g0 = q * S;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        float bv[S], cv[S];
#if BC16
        unpack16(reinterpret_cast<const u16*>(m.bs) + boff16(k) + 2 * g0, bv, cv);
#else
        lds<S>(m.bs + boff(k) + g0, bv);
        lds<S>(m.cs + boff(k) + g0, cv);
#endif
        float acc = 0.f;
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const float a = ex2(dlv[k] * a2[s]);
            h[s] = fmaf(a, h[s], duv[k] * bv[s]);
            acc = fmaf(cv[s], h[s], acc);
        }
        yp[k] = acc;
    }
    sts<K>(m.ys + lane * YROW, yp);
}

// The channel's Q partial sums of steps q·KQ … q·KQ + KQ − 1, the D skip, the gate, the stores.
template <bool FULLV>
__device__ __forceinline__ void finish(const Args& g, const Buf& m, long long b, long long dd, bool live, long long t0,
                                       int c, int q, const Staged& v, float dskip) {
    const long long L = g.L;
    float out[KQ];
#pragma unroll
    for (int k = 0; k < KQ; ++k) out[k] = HAS_D ? dskip * v.uu[k] : 0.f;
#pragma unroll
    for (int p = 0; p < Q; ++p) {
        float part[KQ];
        lds<KQ>(m.ys + (c * Q + p) * YROW + q * KQ, part);
#pragma unroll
        for (int k = 0; k < KQ; ++k) out[k] += part[k];
    }
    const long long ts = t0 + q * KQ;
#if STORE_TB
    if (HAS_Z && live) {
        TU* p = g.yp + b * g.syb + dd * g.syd;
#pragma unroll
        for (int k = 0; k < KQ; ++k) if (FULLV || ts + k < L) p[ts + k] = out_of(out[k], (TU*)nullptr);
    }
#endif
    if (HAS_Z) {
#pragma unroll
        for (int k = 0; k < KQ; ++k) out[k] *= v.zz[k] * rcp(1.f + ex2(v.zz[k] * -1.4426950408889634f));
    }
    if (!live) return;
    TU* yq = g.y + b * g.syb + dd * g.syd;
    alignas(16) TU ov[KQ];
#pragma unroll
    for (int k = 0; k < KQ; ++k) ov[k] = out_of(out[k], (TU*)nullptr);
    constexpr int OB = KQ * sizeof(TU);
    if (FULLV && OB % 16 == 0) {
#pragma unroll
        for (int w = 0; w < OB / 16; ++w)
            *reinterpret_cast<uint4*>(yq + ts + w * (16 / sizeof(TU))) =
                *reinterpret_cast<const uint4*>(&ov[w * (16 / sizeof(TU))]);
    } else if (FULLV && OB == 8) {
        *reinterpret_cast<uint2*>(yq + ts) = *reinterpret_cast<const uint2*>(&ov[0]);
    } else {
#pragma unroll
        for (int k = 0; k < KQ; ++k) if (FULLV || ts + k < L) yq[ts + k] = ov[k];
    }
}

__device__ __forceinline__ void store_state(const Args& g, long long b, long long dd, bool live, long long t0, int q,
                                            const float (&h)[S]) {
#if STORE_TB
    if (t0 % STORE_TB == 0 && live) {  // the state entering this STORE_TB-step chunk, (B, chunks, D, N) fp32
        float* p = g.st + ((b * g.nch + t0 / STORE_TB) * g.Dm + dd) * g.N + q * S;
#pragma unroll
        for (int s = 0; s < S; ++s) p[s] = h[s];
    }
#endif
}

#if PIPE
template <int BYTES>
__device__ __forceinline__ void copy_async(char* dst, const void* src) {
    const unsigned d = shared_addr(dst);
    if constexpr (BYTES % 16 == 0) {
#pragma unroll
        for (int i = 0; i < BYTES / 16; ++i) cp_async16(d + 16 * i, (const char*)src + 16 * i);
    } else {
        static_assert(BYTES == 4 || BYTES == 8, "cp.async copies 4, 8 or 16 bytes");
        cp_async_ca<BYTES>(d, src);
    }
}

// Block t0's raw inputs into this warp's stage ``st`` (whole, aligned blocks only), as one cp.async group.
__device__ __forceinline__ void issue(const Ptrs& p, long long t0, char* st, int lane) {
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        copy_async<16>(st + raw_b(j) + 16 * lane, p.bp[j] + t0);
        copy_async<16>(st + raw_c(j) + 16 * lane, p.cp[j] + t0);
    }
    copy_async<RAW_X>(st + raw_x(0) + RAW_X * lane, p.u + t0);
    copy_async<RAW_X>(st + raw_x(1) + RAW_X * lane, p.dl + t0);
    if (HAS_Z) copy_async<RAW_X>(st + raw_x(2) + RAW_X * lane, p.z + t0);
    cp_commit();
}

template <int BYTES, typename T, int M>
__device__ __forceinline__ void read_raw(const char* src, T (&q)[M]) {
    static_assert(BYTES == M * (int)sizeof(T), "size");
    if constexpr (BYTES % 16 == 0) {
#pragma unroll
        for (int i = 0; i < BYTES / 16; ++i)
            reinterpret_cast<uint4*>(q)[i] = reinterpret_cast<const uint4*>(src)[i];
    } else if constexpr (BYTES == 8) {
        *reinterpret_cast<uint2*>(q) = *reinterpret_cast<const uint2*>(src);
    } else {
        *reinterpret_cast<unsigned*>(q) = *reinterpret_cast<const unsigned*>(src);
    }
}

// Wait until at most one cp.async group is in flight, then read this lane's inputs back from stage st.
__device__ __forceinline__ void fetch(const char* st, int lane, Regs& r) {
    cp_wait_one();
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        read_raw<16>(st + raw_b(j) + 16 * lane, r.bq[j]);
        read_raw<16>(st + raw_c(j) + 16 * lane, r.cq[j]);
    }
    read_raw<RAW_X>(st + raw_x(0) + RAW_X * lane, r.uq);
    read_raw<RAW_X>(st + raw_x(1) + RAW_X * lane, r.xq);
    if (HAS_Z) read_raw<RAW_X>(st + raw_x(2) + RAW_X * lane, r.zq);
}

#endif  // PIPE

// One block, unpipelined (the ragged last block, unaligned rows, a lone whole block): three warp
// barriers around the shared-memory exchanges.
template <bool FULLV>
__device__ __forceinline__ void block_plain(const Args& g, const Buf& m, long long b, long long dd, bool live,
                                            long long t0, int lane, int c, int q, const Regs& r,
                                            const float (&a2)[S], float (&h)[S], float dskip, float dbias) {
    Staged v;
    stage<FULLV>(r, t0, g.L, q, dbias, v);
    __syncwarp();  // earlier reads of this buffer are done
    put(m, v, lane, c, q);
    __syncwarp();
    store_state(g, b, dd, live, t0, q, h);
    recur(m, lane, c, q, a2, h);
    __syncwarp();
    finish<FULLV>(g, m, b, dd, live, t0, c, q, v, dskip);
}

extern "C" __global__ void __launch_bounds__(32 * WARPS) evalkit_selective_scan_fwd_serial(const Args g) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = lane / Q, q = lane % Q;
    const long long b = blockIdx.y;
    const int dw = (blockIdx.x * WARPS + warp) * CW;  // this warp's first channel
    if (dw >= g.Dm) return;  // the whole warp
    const bool live = dw + c < g.Dm;
    const long long dd = live ? dw + c : dw;  // channels past D recompute channel dw and store nothing
    float* sm = smem + warp * (PIPE ? 2 : 1) * WSMEM;
    float a2[S], h[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
        const int n = q * S + s;
        a2[s] = g.A[dd * g.sad + n * g.san] * 1.4426950408889634f;
        h[s] = HAS_H0 ? g.h0[(b * g.Dm + dd) * NN + n] : 0.f;
    }
    const float dskip = HAS_D ? g.Dv[dd] : 0.f;
    const float dbias = HAS_BIAS ? g.bias[dd] : 0.f;
    Ptrs p;
    p.u = g.u + b * g.sub + dd * g.sud + q * KQ;
    p.dl = g.dl + b * g.sdb + dd * g.sdd + q * KQ;
    p.z = HAS_Z ? g.z + b * g.szb + dd * g.szd + q * KQ : nullptr;
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        const int i = lane + 32 * j;
        const int n = i / (K / SEG), part = i % (K / SEG);
        const bool ok = NSEG % 32 == 0 || i < NSEG;
        p.off[j] = ok ? part * SEG : 0;
        p.bp[j] = g.Bm + b * g.sbb + (ok ? n * g.sbn + part * SEG : 0);
        p.cp[j] = g.Cm + b * g.scb + (ok ? n * g.scn + part * SEG : 0);
    }
    const Buf m0(sm), m1(sm + WSMEM);
    long long t0 = 0;
#if PIPE
    if (VEC) {
        // Whole blocks, two at a time, software-pipelined with one warp barrier per block: while block j's
        // recurrence runs (fp32 buffer j % 2), block j + 1's softplus and conversions are computed and
        // written to the other buffer, and block j + 2's raw inputs are on their way (cp.async, stage
        // (j + 2) % 3); block j's outputs are summed and stored after the barrier.
        const long long nblk = 2 * ((g.L / K) / 2);
        char* raw = reinterpret_cast<char*>(smem + WARPS * 2 * WSMEM) + warp * RAW_WARP;
        constexpr int RS = 32 * RAW_LANE;  // bytes between stages
        Regs r;
        Staged v0, v1;
        if (nblk > 0) {
            issue(p, 0, raw, lane);
            issue(p, K, raw + RS, lane);
            fetch(raw, lane, r);
            stage<true>(r, 0, g.L, q, dbias, v0);
            put(m0, v0, lane, c, q);
            __syncwarp();
        }
        int s0 = 0;  // the stage of block j
        for (long long j = 0; j < nblk; j += 2) {
            const long long t = j * K;
            const int s1 = s0 == 2 ? 0 : s0 + 1, s2 = s1 == 2 ? 0 : s1 + 1;
            issue(p, (j + 2 < nblk ? j + 2 : nblk - 1) * K, raw + s2 * RS, lane);
            fetch(raw + s1 * RS, lane, r);
            stage<true>(r, t + K, g.L, q, dbias, v1);
            store_state(g, b, dd, live, t, q, h);
            recur(m0, lane, c, q, a2, h);
            put(m1, v1, lane, c, q);
            __syncwarp();
            finish<true>(g, m0, b, dd, live, t, c, q, v0, dskip);
            issue(p, (j + 3 < nblk ? j + 3 : nblk - 1) * K, raw + s0 * RS, lane);
            fetch(raw + s2 * RS, lane, r);
            stage<true>(r, t + 2 * K, g.L, q, dbias, v0);
            store_state(g, b, dd, live, t + K, q, h);
            recur(m1, lane, c, q, a2, h);
            put(m0, v0, lane, c, q);
            __syncwarp();
            finish<true>(g, m1, b, dd, live, t + K, c, q, v1, dskip);
            s0 = s2;
        }
        cp_wait_all();
        t0 = nblk * K;
    }
#endif
    if (VEC) {  // whole blocks left (without PIPE: all of them)
        for (; t0 + K <= g.L; t0 += K) {
            Regs r;
            load_block<true>(p, g.L, t0, q, r);
            block_plain<true>(g, m0, b, dd, live, t0, lane, c, q, r, a2, h, dskip, dbias);
        }
    }
    for (; t0 < g.L; t0 += K) {
        Regs r;
        load_block<false>(p, g.L, t0, q, r);
        block_plain<false>(g, m0, b, dd, live, t0, lane, c, q, r, a2, h, dskip, dbias);
    }
    if (live) {
#pragma unroll
        for (int s = 0; s < S; ++s) g.hT[(b * g.Dm + dd) * NN + q * S + s] = h[s];
    }
}
"""


def supports(N: int, config: tuple | None = None) -> bool:
    """Whether this layout takes state size ``N``: N = S·Q with Q (lanes per channel) a power of two
    ≤ 32 dividing the block's K steps."""
    S, K = (config or CONFIG)[:2]
    if N % S:
        return False
    Q = N // S
    return Q & (Q - 1) == 0 and Q <= 32 and K % Q == 0 and K % 8 == 0


# Which defaults run this layout instead of the time-parallel one (``cuda._launch`` with no config):
# inference, and training (the forward storing states for a backward). kernels/NOTES.md v12.
SERIAL_INFERENCE = True
SERIAL_TRAINING = True


# This layout has batch·D·N/(32·S) warps, one sequential walk each; below FILL warps per SM sub-partition
# the time-parallel kernel (batch·D/2 warps, each a share of the length) keeps more of the GPU busy: at the
# issue's shape (d_inner 4096, batch 1: 512 warps on the H200's 528 sub-partitions) this one is 1.22× faster;
# at the zoo trainer's (d_inner 128, batch 16: 256 warps) the Mamba trainer ran slower with it (NOTES v12).
FILL = 0.9


def use(N: int, store_tb: int = 0, channels: int | None = None, device: torch.device | None = None) -> bool:
    """Whether ``cuda``'s default forward runs this layout for state size ``N`` (``store_tb``: the
    training forward's state interval; ``channels``: batch·D, with the ``device`` whose SMs count);
    ``EVALKIT_SCAN_SERIAL=0`` keeps the time-parallel kernel."""
    if os.environ.get("EVALKIT_SCAN_SERIAL", "1") == "0" or not supports(N):
        return False
    if channels is not None and device is not None:
        sms = cuda.sm_count(device)
        if channels * (N // CONFIG[0]) / 32 < FILL * 4 * sms:
            return False
    if store_tb:
        return SERIAL_TRAINING and store_tb % CONFIG[1] == 0
    return SERIAL_INFERENCE


def pipe_ok(N: int, config: tuple, u_size: int) -> bool:
    """Whether the pipelined path can copy a lane's K/Q steps of u with cp.async (4, 8 or 16·k bytes);
    otherwise the kernel runs unpipelined."""
    S, K = config[:2]
    x = K // (N // S) * u_size
    return x in (4, 8) or x % 16 == 0


def smem_bytes(N: int, config: tuple | None = None, u_size: int = 2, bc_size: int = 2) -> int:
    """Dynamic shared memory per block: a fp32 buffer per warp (two when software-pipelined, plus the
    raw-input stages of the kernel's RAW_* constants); ``u_size`` / ``bc_size``: element bytes of u, B."""
    S, K, warps, pipe = (config or CONFIG)[:4]
    Q = N // S
    buf = 4 * (2 * (K * N + (K // 8) * 16) + 2 * (32 // Q) * K + 32 * (K + 4))
    if not pipe:
        return warps * buf
    segl = -(-(N * K // (16 // bc_size)) // 32)
    return warps * (2 * buf + 32 * (2 * segl * 16 + 3 * (K // Q) * u_size) * 3)


@functools.lru_cache(maxsize=256)
def source(tu: torch.dtype, tbc: torch.dtype, N: int, S: int, K: int, warps: int, pipe: bool = True,
           bc16: bool = True, *, has_d: bool,
           has_z: bool, has_bias: bool, softplus: bool, has_h0: bool, vec: bool = True, store_tb: int = 0) -> str:
    """The kernel's source for one specialisation (compile-time constants as #defines)."""
    defs = dict(TU=cuda._CODES[tu], TBC=cuda._CODES[tbc], NN=N, S=S, K=K, WARPS=warps, PIPE=int(pipe),
                BC16=int(bc16 and tbc != torch.float32),
                HAS_D=int(has_d), HAS_Z=int(has_z), HAS_BIAS=int(has_bias), SOFTPLUS=int(softplus),
                HAS_H0=int(has_h0), VEC=int(vec), STORE_TB=store_tb)
    # HELPERS' row loaders are sized by K; this kernel has its own, so K is only a name there
    return "".join(f"#define {k} {v}\n" for k, v in defs.items()) + cuda.HELPERS + SOURCE


def launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config=None, store_tb=0, ypre=None):
    """y, the final state and (``store_tb``) the stored states, as ``cuda._launch``; the caller checked
    ``cuda.available`` and ``supports``."""
    S, K, warps, pipe, bc16 = config or CONFIG
    batch, Dm = u.shape[:2]
    N = A.shape[1]
    pipe = pipe and pipe_ok(N, (S, K), u.element_size())
    bc16 = bc16 and B.element_size() == 2
    config = (S, K, warps, pipe, bc16)
    y, final, states, args, vec, _keep = cuda._outputs_and_args(u, delta, A, B, C, D, z, delta_bias,
                                                                initial_state, store_tb, ypre)
    src = source(u.dtype, B.dtype, N, S, K, warps, pipe, bc16, has_d=D is not None, has_z=z is not None,
                 has_bias=delta_bias is not None, softplus=delta_softplus, has_h0=initial_state is not None,
                 vec=vec, store_tb=store_tb)
    f = cuda._function(u.device, src, "evalkit_selective_scan_fwd_serial")
    cw = 32 // (N // S)
    grid = (-(-Dm // (cw * warps)), batch, 1)
    cuda.launch(f, u.device, grid, 32 * warps, args, shared=smem_bytes(N, config, u.element_size(), B.element_size()))
    return y, final, states
