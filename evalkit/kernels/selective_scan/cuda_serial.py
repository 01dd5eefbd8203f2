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

1. converts the block's B and C (K·N values each, shared by its channels) to fp32 in its shared memory,
   transposed to (step, state) so a lane reads its S states of one step in one vector load;
2. computes softplus(Δ + bias) and Δ·u for K/Q steps per lane (the channel's Q lanes split the steps)
   and shares them through shared memory;
3. walks the K steps: for each of its S states, a = exp2(Δ·A_n·log2 e), h = a·h + Δu·B_n, and the
   step's partial y += C_n·h;
4. sums the Q lanes' partial y of each step through shared memory (each lane sums its K/Q steps), adds
   the D skip, applies the SiLU(z) gate and stores its K/Q outputs.

The next block's u, Δ, z, B and C are loaded into registers while a block computes. The final state is
written for decoding; with ``store_tb`` the state entering every ``store_tb`` steps and the pre-gate y
are stored as ``cuda.selective_scan_fwd_cuda_train`` stores them (for the CUDA and Triton backwards).
Inputs as ``cuda``'s (unit stride along L; fp32 / fp16 / bf16, B and C may differ from u), and N = S·Q
with Q a power of two ≤ 32 and Q | K; ``supports`` says whether a shape is taken.
"""

from __future__ import annotations

import functools

import torch

from . import cuda

# (states per lane S, steps per block K, warps per block): kernels/NOTES.md v12.
CONFIG = (4, 16, 4)

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
constexpr int WSMEM = 2 * BSZ + 2 * CW * K + 32 * YROW;   // floats of shared memory per warp

struct Args {
    const TU* u; const TU* dl; const float* A; const TBC* Bm; const TBC* Cm; const float* Dv; const TU* z;
    const float* bias; const float* h0; TU* y; float* hT; float* st; TU* yp;
    int Dm, N; long long L; long long nch;
    long long sub, sud, sdb, sdd, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd;
};

__device__ __forceinline__ float lg2(float x) { float r; asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }
__device__ __forceinline__ float rcp(float x) { float r; asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }

__device__ __forceinline__ int boff(int t) { return t * BROW + (t >> 3) * 16; }

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

// One block's inputs, held in registers (the next block's are loaded while this one computes).
struct Regs {
    TU uq[KQ], xq[KQ], zq[KQ];
    TBC bq[SEGL][SEG], cq[SEGL][SEG];
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
// B / C rows of its 16-byte pieces at their first step.
struct Ptrs {
    const TU* u; const TU* dl; const TU* z; const TBC* bp[SEGL]; const TBC* cp[SEGL]; long long off[SEGL];
};

template <bool FULLV>
__device__ __forceinline__ void load_block(const Ptrs& p, long long L, long long t0, int q, Regs& r) {
    load_run<FULLV>(p.u, t0, L - q * KQ, r.uq);
    load_run<FULLV>(p.dl, t0, L - q * KQ, r.xq);
    if (HAS_Z) load_run<FULLV>(p.z, t0, L - q * KQ, r.zq);
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        if (p.bp[j] != nullptr) {
            load_run<FULLV>(p.bp[j], t0, L - p.off[j], r.bq[j]);
            load_run<FULLV>(p.cp[j], t0, L - p.off[j], r.cq[j]);
        }
    }
}

template <bool FULLV>
__device__ __forceinline__ void compute_block(const Args& g, float* __restrict__ sm, long long b, long long dd,
                                              bool live, long long t0, int lane, int c, int q, const Regs& r,
                                              const float (&a2)[S], float (&h)[S], float dskip, float dbias) {
    const long long L = g.L;
    float* bs = sm;
    float* cs = sm + BSZ;
    float* dls = sm + 2 * BSZ;
    float* dus = dls + CW * K;
    float* ys = dus + CW * K;
    __syncwarp();  // the previous block's reads of this warp's shared memory are done
    // 1. B and C of the block, fp32, transposed to (step, state)
#pragma unroll
    for (int j = 0; j < SEGL; ++j) {
        const int i = lane + 32 * j;
        if (NSEG % 32 == 0 || i < NSEG) {
            const int n = i / (K / SEG), part = i % (K / SEG);
#pragma unroll
            for (int e = 0; e < SEG; ++e) {
                bs[boff(part * SEG + e) + n] = f32_of(r.bq[j][e]);
                cs[boff(part * SEG + e) + n] = f32_of(r.cq[j][e]);
            }
        }
    }
    // 2. softplus(Δ + bias) and Δ·u of this lane's K/Q steps
    float uu[KQ];
    {
        float dt[KQ], du[KQ];
#pragma unroll
        for (int k = 0; k < KQ; ++k) {
            uu[k] = f32_of(r.uq[k]);
            float x = f32_of(r.xq[k]) + dbias;
            float v = x;
            if (SOFTPLUS) {  // log1p(exp(x)) = ln(w)·e/(w − 1) with w = 1 + e (accurate for x << 0); x above 20
                const float e = ex2(x * 1.4426950408889634f);
                const float w = 1.f + e;
                const float lp = lg2(w) * (0.6931471805599453f * e) * rcp(w - 1.f);
                v = x > 20.f ? x : (w == 1.f ? e : lp);
            }
            if (!FULLV) v = (t0 + q * KQ + k < L) ? v : 0.f;  // padded steps: decay 1, input 0
            dt[k] = v;
            du[k] = v * uu[k];
        }
        sts<KQ>(dls + c * K + q * KQ, dt);
        sts<KQ>(dus + c * K + q * KQ, du);
    }
    __syncwarp();
#if STORE_TB
    if (t0 % STORE_TB == 0 && live) {  // the state entering this STORE_TB-step chunk, (B, chunks, D, N) fp32
        float* p = g.st + ((b * g.nch + t0 / STORE_TB) * g.Dm + dd) * g.N + (lane % Q) * S;
#pragma unroll
        for (int s = 0; s < S; ++s) p[s] = h[s];
    }
#endif
    // 3. the K steps in order, S states each
    float yp[K], dlv[K], duv[K];
    lds<K>(dls + c * K, dlv);
    lds<K>(dus + c * K, duv);
    const int g0 = q * S;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        float bv[S], cv[S];
        lds<S>(bs + boff(k) + g0, bv);
        lds<S>(cs + boff(k) + g0, cv);
        float acc = 0.f;
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const float a = ex2(dlv[k] * a2[s]);
            h[s] = fmaf(a, h[s], duv[k] * bv[s]);
            acc = fmaf(cv[s], h[s], acc);
        }
        yp[k] = acc;
    }
    // 4. the channel's Q partial sums of each step; this lane finishes steps q·KQ … q·KQ + KQ − 1
    sts<K>(ys + lane * YROW, yp);
    __syncwarp();
    float out[KQ];
#pragma unroll
    for (int k = 0; k < KQ; ++k) out[k] = HAS_D ? dskip * uu[k] : 0.f;
#pragma unroll
    for (int p = 0; p < Q; ++p) {
        float part[KQ];
        lds<KQ>(ys + (c * Q + p) * YROW + q * KQ, part);
#pragma unroll
        for (int k = 0; k < KQ; ++k) out[k] += part[k];
    }
    if (!live) return;
    const long long ts = t0 + q * KQ;
#if STORE_TB
    if (HAS_Z) {
        TU* p = g.yp + b * g.syb + dd * g.syd;
#pragma unroll
        for (int k = 0; k < KQ; ++k) if (FULLV || ts + k < L) p[ts + k] = out_of(out[k], (TU*)nullptr);
    }
#endif
    if (HAS_Z) {
#pragma unroll
        for (int k = 0; k < KQ; ++k) {
            const float zz = f32_of(r.zq[k]);
            out[k] *= zz * rcp(1.f + ex2(zz * -1.4426950408889634f));
        }
    }
    TU* yq = g.y + b * g.syb + dd * g.syd;
    TU ov[KQ];
#pragma unroll
    for (int k = 0; k < KQ; ++k) ov[k] = out_of(out[k], (TU*)nullptr);
    constexpr int OB = KQ * sizeof(TU);
    if (FULLV && OB % 16 == 0) {
#pragma unroll
        for (int v = 0; v < OB / 16; ++v)
            *reinterpret_cast<uint4*>(yq + ts + v * (16 / sizeof(TU))) =
                *reinterpret_cast<const uint4*>(&ov[v * (16 / sizeof(TU))]);
    } else if (FULLV && OB == 8) {
        *reinterpret_cast<uint2*>(yq + ts) = *reinterpret_cast<const uint2*>(&ov[0]);
    } else {
#pragma unroll
        for (int k = 0; k < KQ; ++k) if (FULLV || ts + k < L) yq[ts + k] = ov[k];
    }
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
    float* sm = smem + warp * WSMEM;
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
        p.off[j] = part * SEG;
        p.bp[j] = ok ? g.Bm + b * g.sbb + n * g.sbn + part * SEG : nullptr;
        p.cp[j] = ok ? g.Cm + b * g.scb + n * g.scn + part * SEG : nullptr;
    }
    long long t0 = 0;
    if (VEC) {  // whole blocks: two register buffers, the next block's loads in flight during this one
        const long long nfull = g.L / K;
        Regs r0, r1;
        if (nfull > 0) load_block<true>(p, g.L, 0, q, r0);
        long long j = 0;
        for (; j + 1 < nfull; j += 2) {
            load_block<true>(p, g.L, (j + 1) * K, q, r1);
            compute_block<true>(g, sm, b, dd, live, j * K, lane, c, q, r0, a2, h, dskip, dbias);
            if (j + 2 < nfull) load_block<true>(p, g.L, (j + 2) * K, q, r0);
            compute_block<true>(g, sm, b, dd, live, (j + 1) * K, lane, c, q, r1, a2, h, dskip, dbias);
        }
        if (j < nfull) compute_block<true>(g, sm, b, dd, live, j * K, lane, c, q, r0, a2, h, dskip, dbias);
        t0 = nfull * K;
    }
    for (; t0 < g.L; t0 += K) {
        Regs r;
        load_block<false>(p, g.L, t0, q, r);
        compute_block<false>(g, sm, b, dd, live, t0, lane, c, q, r, a2, h, dskip, dbias);
    }
    if (live) {
#pragma unroll
        for (int s = 0; s < S; ++s) g.hT[(b * g.Dm + dd) * NN + q * S + s] = h[s];
    }
}
"""


def supports(N: int, config: tuple[int, int, int] | None = None) -> bool:
    """Whether this layout takes state size ``N``: N = S·Q with Q (lanes per channel) a power of two
    ≤ 32 dividing the block's K steps."""
    S, K, _ = config or CONFIG
    if N % S:
        return False
    Q = N // S
    return Q & (Q - 1) == 0 and Q <= 32 and K % Q == 0 and K % 8 == 0


def smem_bytes(N: int, config: tuple[int, int, int] | None = None) -> int:
    S, K, warps = config or CONFIG
    Q = N // S
    return 4 * warps * (2 * (K * N + (K // 8) * 16) + 2 * (32 // Q) * K + 32 * (K + 4))


@functools.lru_cache(maxsize=256)
def source(tu: torch.dtype, tbc: torch.dtype, N: int, S: int, K: int, warps: int, *, has_d: bool, has_z: bool,
           has_bias: bool, softplus: bool, has_h0: bool, vec: bool = True, store_tb: int = 0) -> str:
    """The kernel's source for one specialisation (compile-time constants as #defines)."""
    defs = dict(TU=cuda._CODES[tu], TBC=cuda._CODES[tbc], NN=N, S=S, K=K, WARPS=warps, HAS_D=int(has_d),
                HAS_Z=int(has_z), HAS_BIAS=int(has_bias), SOFTPLUS=int(softplus), HAS_H0=int(has_h0), VEC=int(vec),
                STORE_TB=store_tb)
    # HELPERS' row loaders are sized by K; this kernel has its own, so K is only a name there
    return "".join(f"#define {k} {v}\n" for k, v in defs.items()) + cuda.HELPERS + SOURCE


def launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config=None, store_tb=0, ypre=None):
    """y, the final state and (``store_tb``) the stored states, as ``cuda._launch``; the caller checked
    ``cuda.available`` and ``supports``."""
    S, K, warps = config or CONFIG
    batch, Dm, L = u.shape
    N = A.shape[1]
    y = torch.empty(batch, Dm, L, device=u.device, dtype=u.dtype)
    final = torch.empty(batch, Dm, N, device=u.device, dtype=torch.float32)
    nch = -(-L // store_tb) if store_tb else 0
    states = torch.empty(batch, nch, Dm, N, device=u.device, dtype=torch.float32) if store_tb else None
    A32 = A.to(torch.float32)
    D32 = D.to(torch.float32).contiguous() if D is not None else A32
    b32 = delta_bias.to(torch.float32).contiguous() if delta_bias is not None else A32
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else final
    zt = z if z is not None else u
    vec = cuda._vec_ok(u.element_size(), u, delta, z, y, ypre) and cuda._vec_ok(B.element_size(), B, C)
    src = source(u.dtype, B.dtype, N, S, K, warps, has_d=D is not None, has_z=z is not None,
                 has_bias=delta_bias is not None, softplus=delta_softplus, has_h0=initial_state is not None,
                 vec=vec, store_tb=store_tb)
    f = cuda._function(u.device, src, "evalkit_selective_scan_fwd_serial")
    ptrs = [t.data_ptr() for t in (u, delta, A32, B, C, D32, zt, b32, h0, y, final,
                                    states if states is not None else final, ypre if ypre is not None else y)]
    strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), A32.stride(0), A32.stride(1),
               B.stride(0), B.stride(1), C.stride(0), C.stride(1), zt.stride(0), zt.stride(1),
               y.stride(0), y.stride(1))
    args = cuda._Args(*ptrs, Dm, N, L, nch, *strides)
    cw = 32 // (N // S)
    grid = (-(-Dm // (cw * warps)), batch, 1)
    with torch.cuda.device(u.device):
        f(grid, 32 * warps, args, torch.cuda.current_stream(u.device), shared=smem_bytes(N, config))
    return y, final, states
