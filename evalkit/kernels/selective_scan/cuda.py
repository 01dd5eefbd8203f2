"""Selective scan (Mamba-1) forward as a CUDA C++ kernel compiled at run time by NVRTC: inference, and
in training the same kernel storing the state entering every ``tb`` steps and the pre-gate y
(``selective_scan_fwd_cuda_train``): every 32·K steps for the CUDA backward (``cuda_bwd``), every 128
for the Triton time backward.

Why a second language (kernels/NOTES.md, v6-v10): the Triton kernels leave each thread's register
layout to the compiler, and the time-parallel Triton forward spends ~22 instructions per (t, d, n)
element against one exponential, at 255 registers. This kernel is mamba-ssm's CUDA scheme written out:
one warp owns ``ROWS`` channels and walks the sequence in blocks of 32·K steps; each lane owns K
consecutive steps and, for each state index n in turn (a loop that is not unrolled, so the registers
hold one state's values at a time):

1. runs its K steps as a plain recurrence from zero (exp2(Δ·A_n), Δ·u·B_n, the running decay product);
2. scans the 32 lane totals (decay, state) across the warp with shuffles (five rounds);
3. takes the state entering its steps from its left neighbour's inclusive total and the block's carry,
   fixes up its K states with one multiply-add each and contracts them with C_n into y.

The carried state h[:, n] lives in lane n's register (N <= 32), A[:, n] likewise; both reach the other
lanes by one shuffle per state. Softplus(Δ + bias), the D skip and the SiLU(z) gate are fused; the final
state is written for decoding. Inputs contiguous along L (u, delta, z, B, C with unit L stride) in
float32, float16 or bfloat16 (B and C may differ from u); A, D and the Δ bias are read in float32.

Without an explicit ``config`` the forward (inference and training) runs ``cuda_serial``'s state-split
layout instead where that takes the shape and its warps fill the GPU (``cuda_serial.use``; kernels/NOTES.md
v12: 1.22–1.28× faster at d_inner 4096); this module's kernel is the default for the rest.

No CUDA toolkit is needed: NVRTC ships with PyTorch's CUDA wheels (the nvidia-cuda-nvrtc package),
and the compiled module is launched through the driver API (ctypes) on PyTorch's current stream, so
CUDA graph capture works. On CPU tensors (tests only: ``available`` is false for them) the same source runs under
``evalkit.kernels.cuda_emu``, the CPU emulator (tests/kernels/test_cuda_emulated.py, in CI); the GPU files run the
full grid. The Triton kernels remain the fallback (``available()`` false: no NVRTC, compute
capability < 8.0, N > 32, or strides this kernel does not take; or, once, NVRTC or the driver refused
the module: ``disable`` warns and the Triton kernels run from then on).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import warnings

import torch

from evalkit.kernels.dispatch import note_variant

# (steps per lane K, channels per warp ROWS, warps per block, state loop unroll, B and C converted to
# float32 before the kernel, two passes over a lane's steps instead of a fix-up, B / C / z prefetched):
# kernels/NOTES.md v10.
CONFIG = (16, 2, 4, 1, False, False, True)

# Types, conversions and the K-item row loads / stores, shared with the backward (``cuda_bwd``).
HELPERS = r"""
typedef unsigned short u16;
struct bf16_t { u16 x; };
struct f16_t { u16 x; };

// Every PTX instruction the kernels use, one function each, so that the host build of a kernel (``cuda_emu``: the
// kernels run on the CPU in tests) supplies its own versions of exactly these.
#ifndef EVALKIT_HOST
__device__ __forceinline__ float f16_bits_to_f32(u16 x) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f;
}
__device__ __forceinline__ u16 f32_to_bf16_bits(float f) {
    u16 r; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f)); return r;
}
__device__ __forceinline__ u16 f32_to_f16_bits(float f) {
    u16 r; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f)); return r;
}
__device__ __forceinline__ float ex2(float x) {
    float r; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r;
}
__device__ __forceinline__ float lg2(float x) {
    float r; asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r;
}
__device__ __forceinline__ float rcp(float x) {
    float r; asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r;
}
// cp.async from global memory to the shared-memory address dst (shared_addr): 16 bytes bypassing L1 (cg), or 4 / 8
// bytes (ca); its groups
__device__ __forceinline__ unsigned shared_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
}
template <int BYTES> __device__ __forceinline__ void cp_async_ca(unsigned dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" :: "r"(dst), "l"(src), "n"(BYTES) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_wait_one() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// a 16-byte atomic add without return (sm_90)
__device__ __forceinline__ void red_add_v4(float* p, float a, float b, float c, float d) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}
#endif

__device__ __forceinline__ float f32_of(float v) { return v; }
__device__ __forceinline__ float f32_of(bf16_t v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float f32_of(f16_t v) { return f16_bits_to_f32(v.x); }
__device__ __forceinline__ float out_of(float f, float*) { return f; }
__device__ __forceinline__ bf16_t out_of(float f, bf16_t*) { bf16_t r; r.x = f32_to_bf16_bits(f); return r; }
__device__ __forceinline__ f16_t out_of(float f, f16_t*) { f16_t r; r.x = f32_to_f16_bits(f); return r; }

// A lane's run of K items of T: the widest access (<= 16 bytes) that it divides into (K·sizeof(T) can be less
// than 16 bytes, e.g. K 4 of a 16-bit type).
template <int NB> struct VecOf;
template <> struct VecOf<16> { typedef uint4 t; };
template <> struct VecOf<8> { typedef uint2 t; };
template <> struct VecOf<4> { typedef unsigned t; };
template <> struct VecOf<2> { typedef unsigned short t; };
template <typename T> struct Run {
    static constexpr int NB = K * (int)sizeof(T) < 16 ? K * (int)sizeof(T) : 16;
    static constexpr int V = NB / (int)sizeof(T);
    typedef typename VecOf<NB>::t vec;
};

// K items of one row starting at step t0: vector loads (FULLV: the whole run in range and aligned),
// else element by element with zeros past L.
template <bool FULLV, typename T>
__device__ __forceinline__ void load_raw(const T* __restrict__ p, long long t0, long long L, T (&q)[K]) {
    typedef typename Run<T>::vec W;
    constexpr int V = Run<T>::V;
    if (FULLV) {
#pragma unroll
        for (int v = 0; v < K / V; ++v)
            *reinterpret_cast<W*>(&q[v * V]) = __ldg(reinterpret_cast<const W*>(p + t0 + v * V));
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) {
            if (t0 + i < L) q[i] = p[t0 + i]; else q[i] = T{0};
        }
    }
}

template <bool FULLV, typename T>
__device__ __forceinline__ void store_items(T* __restrict__ p, long long t0, long long L, const float (&v)[K]) {
    typedef typename Run<T>::vec W;
    constexpr int V = Run<T>::V;
    alignas(16) T q[K];
#pragma unroll
    for (int i = 0; i < K; ++i) q[i] = out_of(v[i], (T*)nullptr);
    if (FULLV) {
#pragma unroll
        for (int w = 0; w < K / V; ++w)
            *reinterpret_cast<W*>(p + t0 + w * V) = *reinterpret_cast<const W*>(&q[w * V]);
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) if (t0 + i < L) p[t0 + i] = q[i];
    }
}

"""

SOURCE = HELPERS + r"""
constexpr int kUnrollN = UNROLL_N;

struct Args {
    const TU* u; const TU* dl; const float* A; const TBC* Bm; const TBC* Cm; const float* Dv; const TU* z;
    const float* bias; const float* h0; TU* y; float* hT; float* st; TU* yp;
    int Dm, N; long long L; long long nch;
    long long sub, sud, sdb, sdd, sad, san, sbb, sbn, scb, scn, szb, szd, syb, syd;
};

// State n for this warp's rows over one block: the lane's K steps from zero, the warp scan of the lane
// totals, the entering state, and C_n's contraction into acc; lane n's carry moves on by the block.
__device__ __forceinline__ void state_step(const Args& g, float* __restrict__ stp, int d0, int n, int lane,
                                           const TBC (&bq)[K], const TBC (&cq)[K], const float (&a2)[ROWS], float (&carry)[ROWS],
                                           const float (&dlt)[ROWS][K], const float (&dlu)[ROWS][K],
                                           const float (&sdt)[ROWS], float (&acc)[ROWS][K]) {
    const unsigned FULL = 0xffffffffu;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float an = __shfl_sync(FULL, a2[r], n);
        const float cn = __shfl_sync(FULL, carry[r], n);
#if TWO_PASS
        // pass 1: the lane's total from zero; its decay product is exp2(A_n · ΣΔ) (one exp per lane)
        float E[K], Bu[K];
        float h = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            E[k] = ex2(dlt[r][k] * an);
            Bu[k] = dlu[r][k] * f32_of(bq[k]);
            h = fmaf(E[k], h, Bu[k]);
        }
        float p = ex2(sdt[r] * an);
#else
        float P[K], H[K];
        float p = 1.f, h = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {  // this lane's steps from a zero state
            const float a = ex2(dlt[r][k] * an);
            h = fmaf(a, h, dlu[r][k] * f32_of(bq[k]));
            p *= a;
            P[k] = p;
            H[k] = h;
        }
#endif
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {  // inclusive scan of the lane totals
            const float p2 = __shfl_up_sync(FULL, p, off);
            const float h2 = __shfl_up_sync(FULL, h, off);
            if (lane >= off) { h = fmaf(p, h2, h); p *= p2; }
        }
        float pe = __shfl_up_sync(FULL, p, 1);
        float he = __shfl_up_sync(FULL, h, 1);
        if (lane == 0) { pe = 1.f; he = 0.f; }
        const float hin = fmaf(pe, cn, he);  // the state entering this lane's steps
#if STORE_TB
        // training: the state entering each STORE_TB-step chunk, (B, chunks, D, N) fp32, for the backward
        // (stp: row d0's states of this lane's chunk, or null where the lane starts no chunk)
        if (stp != nullptr && d0 + r < g.Dm) stp[r * g.N + n] = hin;
#endif
        const float pt = __shfl_sync(FULL, p, 31);
        const float ht = __shfl_sync(FULL, h, 31);
        if (lane == n) carry[r] = fmaf(pt, cn, ht);
#if TWO_PASS
        // pass 2: the recurrence again from the true entering state
        float hh = hin;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            hh = fmaf(E[k], hh, Bu[k]);
            acc[r][k] = fmaf(f32_of(cq[k]), hh, acc[r][k]);
        }
#else
#pragma unroll
        for (int k = 0; k < K; ++k)
            acc[r][k] = fmaf(f32_of(cq[k]), fmaf(P[k], hin, H[k]), acc[r][k]);
#endif
    }
}

// One block of 32·K steps for this warp's ROWS channels (t0: this lane's first step). FULLV: every
// step in range and the 16-byte loads aligned (all blocks but a ragged last one, when VEC).
// PREFETCH: B_n+1, C_n+1 are loaded while state n computes (two buffers, the state loop unrolled by
// two) and z at the block's start, so that no state waits for its loads.
template <bool FULLV>
__device__ __forceinline__ void scan_block(const Args& g, long long b, long long t0, int lane, int d0,
                                           const long long (&dd)[ROWS], const float (&a2)[ROWS],
                                           float (&carry)[ROWS], const float (&dskip)[ROWS],
                                           const float (&dbias)[ROWS]) {
    const long long L = g.L;
    const TBC* Bb = g.Bm + b * g.sbb;
    const TBC* Cb = g.Cm + b * g.scb;
#if PREFETCH
    TBC bq0[K], cq0[K], bq1[K], cq1[K];
    load_raw<FULLV>(Bb, t0, L, bq0);
    load_raw<FULLV>(Cb, t0, L, cq0);
    TU zq[ROWS][K];
    if (HAS_Z) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) load_raw<FULLV>(g.z + b * g.szb + dd[r] * g.szd, t0, L, zq[r]);
    }
#endif
    float dlt[ROWS][K], dlu[ROWS][K], acc[ROWS][K], sdt[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        sdt[r] = 0.f;
        TU uq[K], xq[K];
        load_raw<FULLV>(g.u + b * g.sub + dd[r] * g.sud, t0, L, uq);
        load_raw<FULLV>(g.dl + b * g.sdb + dd[r] * g.sdd, t0, L, xq);
#pragma unroll
        for (int k = 0; k < K; ++k) {
            float uu = f32_of(uq[k]);
            float x = f32_of(xq[k]) + dbias[r];
            float dt = x;
            if (SOFTPLUS) {  // log1p(exp(x)), accurate for x << 0; identity above 20
                float e = __expf(x);
                float w = 1.f + e;
                float lp = (w == 1.f) ? e : __fdividef(__logf(w) * e, w - 1.f);
                dt = x > 20.f ? x : lp;
            }
            if (!FULLV) dt = (t0 + k < L) ? dt : 0.f;  // padded steps: decay 1, input 0
            dlt[r][k] = dt;
            sdt[r] += dt;
            dlu[r][k] = dt * uu;
            acc[r][k] = dskip[r] * uu;
        }
    }
    float* stp = nullptr;
#if STORE_TB
    if ((lane * K) % STORE_TB == 0 && t0 < L) stp = g.st + ((b * g.nch + t0 / STORE_TB) * g.Dm + d0) * g.N;
#endif
#if PREFETCH
    for (int n = 0; n < g.N; n += 2) {
        const bool has1 = n + 1 < g.N;
        if (has1) {
            load_raw<FULLV>(Bb + (n + 1) * g.sbn, t0, L, bq1);
            load_raw<FULLV>(Cb + (n + 1) * g.scn, t0, L, cq1);
        }
        state_step(g, stp, d0, n, lane, bq0, cq0, a2, carry, dlt, dlu, sdt, acc);
        if (has1) {
            if (n + 2 < g.N) {
                load_raw<FULLV>(Bb + (n + 2) * g.sbn, t0, L, bq0);
                load_raw<FULLV>(Cb + (n + 2) * g.scn, t0, L, cq0);
            }
            state_step(g, stp, d0, n + 1, lane, bq1, cq1, a2, carry, dlt, dlu, sdt, acc);
        }
    }
#else
#pragma unroll (kUnrollN)
    for (int n = 0; n < g.N; ++n) {
        TBC bq[K], cq[K];
        load_raw<FULLV>(Bb + n * g.sbn, t0, L, bq);
        load_raw<FULLV>(Cb + n * g.scn, t0, L, cq);
        state_step(g, stp, d0, n, lane, bq, cq, a2, carry, dlt, dlu, sdt, acc);
    }
#endif
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (d0 + r >= g.Dm) continue;
#if STORE_TB
        if (HAS_Z) store_items<FULLV>(g.yp + b * g.syb + dd[r] * g.syd, t0, L, acc[r]);  // pre-gate y
#endif
        if (HAS_Z) {
#if !PREFETCH
            TU zq[ROWS][K];
            load_raw<FULLV>(g.z + b * g.szb + dd[r] * g.szd, t0, L, zq[r]);
#endif
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const float zz = f32_of(zq[r][k]);
                acc[r][k] *= __fdividef(zz, 1.f + __expf(-zz));
            }
        }
        store_items<FULLV>(g.y + b * g.syb + dd[r] * g.syd, t0, L, acc[r]);
    }
}

extern "C" __global__ void __launch_bounds__(32 * WARPS) evalkit_selective_scan_fwd(const Args g) {
    const int lane = threadIdx.x & 31;
    const long long b = blockIdx.y;
    const int d0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
    if (d0 >= g.Dm) return;  // the whole warp
    float a2[ROWS], carry[ROWS], dskip[ROWS], dbias[ROWS];
    long long dd[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        dd[r] = (d0 + r < g.Dm) ? d0 + r : d0;  // rows past D recompute row d0 and store nothing
        a2[r] = lane < g.N ? g.A[dd[r] * g.sad + lane * g.san] * 1.4426950408889634f : 0.f;
        carry[r] = (HAS_H0 && lane < g.N) ? g.h0[(b * g.Dm + dd[r]) * g.N + lane] : 0.f;
        dskip[r] = HAS_D ? g.Dv[dd[r]] : 0.f;
        dbias[r] = HAS_BIAS ? g.bias[dd[r]] : 0.f;
    }
    long long tb = 0;
    if (VEC)
        for (; tb + 32 * K <= g.L; tb += 32 * K)
            scan_block<true>(g, b, tb + lane * K, lane, d0, dd, a2, carry, dskip, dbias);
    for (; tb < g.L; tb += 32 * K)
        scan_block<false>(g, b, tb + lane * K, lane, d0, dd, a2, carry, dskip, dbias);
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        if (d0 + r < g.Dm && lane < g.N) g.hT[(b * g.Dm + dd[r]) * g.N + lane] = carry[r];
}
"""

_CODES = {torch.float32: "float", torch.float16: "f16_t", torch.bfloat16: "bf16_t"}


@functools.lru_cache(maxsize=256)  # one str object per specialisation: the module cache's key hashes once
def source(tu: torch.dtype, tbc: torch.dtype, K: int, rows: int, warps: int, unroll_n: int, two_pass: bool = False,
           prefetch: bool = True, *, has_d: bool, has_z: bool, has_bias: bool, softplus: bool, has_h0: bool, vec: bool = True,
           store_tb: int = 0) -> str:
    """The kernel's source for one specialisation (the compile-time constants as #defines). ``vec``:
    every row of u, delta, z, B, C and y starts 16-byte aligned, so whole blocks use 16-byte accesses.
    ``store_tb`` (training): also store the state entering every ``store_tb`` steps and the pre-gate y."""
    defs = dict(TU=_CODES[tu], TBC=_CODES[tbc], K=K, ROWS=rows, WARPS=warps, UNROLL_N=unroll_n,
                HAS_D=int(has_d), HAS_Z=int(has_z), HAS_BIAS=int(has_bias), SOFTPLUS=int(softplus),
                HAS_H0=int(has_h0), VEC=int(vec), TWO_PASS=int(two_pass),
                PREFETCH=int(prefetch), STORE_TB=store_tb)
    return "".join(f"#define {k} {v}\n" for k, v in defs.items()) + SOURCE


# ---------------------------------------------------------------------------------------------------
# NVRTC and the driver API through ctypes


class CompileError(RuntimeError):
    """NVRTC could not compile the kernel, or the driver could not load the module."""


_DISABLED: list[str] = []  # why the kernel was switched off in this process (``disable``)


def disable(reason: str) -> None:
    """Switch the CUDA selective-scan kernels (this forward and ``cuda_bwd``'s backward, whose states it
    stores) off for the rest of the process (``available`` false), warning once."""
    if not _DISABLED:
        warnings.warn(f"evalkit: the CUDA selective-scan kernels are off, the Triton kernels run instead: {reason}",
                      RuntimeWarning, stacklevel=3)
    _DISABLED.append(reason)


@functools.cache
def _nvrtc() -> ctypes.CDLL:
    try:  # PyTorch's own loader knows its wheel's NVRTC
        from torch.cuda._utils import _get_gpu_rtc_library

        return _get_gpu_rtc_library()
    except Exception:  # noqa: BLE001  (private API: fall back to the nvidia wheel's library)
        pass
    for base in sys.path:
        d = os.path.join(base, "nvidia", "cuda_nvrtc", "lib")
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.startswith("libnvrtc.so") and "alt" not in f:
                    return ctypes.CDLL(os.path.join(d, f))
    return ctypes.CDLL("libnvrtc.so")


def _check_nvrtc(lib: ctypes.CDLL, res: int, what: str) -> None:
    if res != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise CompileError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(res)!r}")


def compile_source(src: str, arch: str, *, cubin: bool = True) -> bytes:
    """Compile ``src`` for ``arch`` ("90": sm_90 machine code; ``cubin=False``: PTX for compute_90)."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    _check_nvrtc(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"evalkit_scan.cu", 0, None, None),
                 "create")
    target = f"--gpu-architecture={'sm' if cubin else 'compute'}_{arch}"
    opts = [target.encode(), b"-std=c++17", b"--fmad=true"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    res = lib.nvrtcCompileProgram(prog, len(opts), arr)
    if res != 0:
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise CompileError("NVRTC compile failed:\n" + log.value.decode(errors="replace"))
    size = ctypes.c_size_t()
    get_size, get = ((lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX))
    _check_nvrtc(lib, get_size(prog, ctypes.byref(size)), "size")
    buf = ctypes.create_string_buffer(size.value)
    _check_nvrtc(lib, get(prog, buf), "get")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.raw


@functools.cache
def _cuda() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check_cu(res: int, what: str) -> None:
    if res != 0:
        name = ctypes.c_char_p()
        _cuda().cuGetErrorName(res, ctypes.byref(name))
        raise RuntimeError(f"CUDA driver {what} failed: {name.value!r} ({res})")


class _Function:
    def __init__(self, image: bytes, name: str) -> None:
        self._image = ctypes.create_string_buffer(image, len(image))  # kept alive with the module
        self.module = ctypes.c_void_p()
        _check_cu(_cuda().cuModuleLoadData(ctypes.byref(self.module), self._image), "cuModuleLoadData")
        self.func = ctypes.c_void_p()
        _check_cu(_cuda().cuModuleGetFunction(ctypes.byref(self.func), self.module, name.encode()),
                  "cuModuleGetFunction")
        self.shared = 48 * 1024  # dynamic shared memory allowed without opting in

    def __call__(self, grid: tuple[int, int, int], block: int, args: ctypes.Structure,
                 stream: torch.cuda.Stream, shared: int = 0) -> None:
        if shared > self.shared:  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check_cu(_cuda().cuFuncSetAttribute(self.func, 8, shared), "cuFuncSetAttribute")
            self.shared = shared
        arr = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(args), ctypes.c_void_p))  # one by-value struct
        _check_cu(_cuda().cuLaunchKernel(self.func, grid[0], grid[1], grid[2], block, 1, 1, shared,
                                         ctypes.c_void_p(stream.cuda_stream), arr, None), "cuLaunchKernel")


class _Args(ctypes.Structure):  # the kernel's ``struct Args``, passed by value
    _fields_ = ([(n, ctypes.c_void_p) for n in ("u", "dl", "A", "Bm", "Cm", "Dv", "z", "bias", "h0", "y", "hT",
                                                 "st", "yp")]
                + [("Dm", ctypes.c_int), ("N", ctypes.c_int), ("L", ctypes.c_longlong), ("nch", ctypes.c_longlong)]
                + [(n, ctypes.c_longlong) for n in ("sub", "sud", "sdb", "sdd", "sad", "san", "sbb", "sbn", "scb",
                                                     "scn", "szb", "szd", "syb", "syd")])


_FUNCS: dict[tuple, _Function] = {}


def _function(device: torch.device, src: str, name: str = "evalkit_selective_scan_fwd"):
    """The compiled kernel for ``device``; on a CPU device, the kernel under ``cuda_emu`` (tests)."""
    if device.type == "cpu":
        from evalkit.kernels import cuda_emu

        return cuda_emu.function(src, name)
    key = (device.index, src)
    f = _FUNCS.get(key)
    if f is None:
        major, minor = torch.cuda.get_device_capability(device)
        with torch.cuda.device(device):
            image = compile_source(src, f"{major}{minor}")
            try:
                f = _Function(image, name)
            except RuntimeError as e:  # e.g. a driver older than the NVRTC that built the module
                raise CompileError(str(e)) from e
        _FUNCS[key] = f
    return f


def launch(f, device: torch.device, grid: tuple[int, int, int], block: int, args: ctypes.Structure,
           shared: int = 0) -> None:
    """Launch ``f`` (from ``_function``) on ``device``'s current stream, or in the emulator for a CPU device."""
    if device.type == "cpu":
        f(grid, block, args, shared=shared)
        return
    with torch.cuda.device(device):
        f(grid, block, args, torch.cuda.current_stream(device), shared=shared)


def capability(device: torch.device) -> tuple[int, int]:
    """The device's compute capability; for a CPU device, the emulator's (``cuda_emu.CAPABILITY``)."""
    if device.type == "cpu":
        from evalkit.kernels import cuda_emu

        return cuda_emu.CAPABILITY
    return torch.cuda.get_device_capability(device)


def sm_count(device: torch.device) -> int:
    """The device's SMs; for a CPU device, the emulated part's (``cuda_emu.SMS``)."""
    if device.type == "cpu":
        from evalkit.kernels import cuda_emu

        return cuda_emu.SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def _nvrtc_works() -> bool:
    try:
        _nvrtc()
    except Exception:  # noqa: BLE001  (no NVRTC: the Triton kernels run)
        return False
    return True


def available(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              z: torch.Tensor | None) -> bool:
    """Whether this kernel takes these inputs: CUDA tensors on a GPU of compute capability >= 8.0,
    NVRTC loadable, N <= 32, u / delta / z of one dtype and B / C of one, unit stride along L."""
    if os.environ.get("EVALKIT_SCAN_CUDA", "1") == "0" or not u.is_cuda or _DISABLED:
        return False
    if u.dtype not in _CODES or B.dtype not in _CODES or delta.dtype != u.dtype or C.dtype != B.dtype:
        return False
    if z is not None and z.dtype != u.dtype:
        return False
    if A.shape[1] > 32 or B.dim() != 3 or u.dim() != 3:
        return False
    if any(t is not None and t.shape[-1] > 1 and t.stride(-1) != 1 for t in (u, delta, z, B, C)):
        return False
    if torch.cuda.get_device_capability(u.device)[0] < 8:
        return False
    return _nvrtc_works()


def _vec_ok(elem: int, *ts: torch.Tensor | None) -> bool:
    v = 16 // elem
    return all(t is None or (t.data_ptr() % 16 == 0 and all(s % v == 0 for s in t.stride()[:-1])) for t in ts)


def selective_scan_fwd_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True, initial_state: torch.Tensor | None = None,
    config: tuple[int, int, int, int, bool, bool, bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, D, L) in u's dtype and the final state (B, D, N) fp32; the caller checked ``available``.
    ``config``: (K, ROWS, WARPS, UNROLL_N, bc32, two_pass, prefetch) as ``CONFIG``."""
    y, final, _ = _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config, 0, None)
    return y, final


def supports_store(tb: int, config: tuple | None = None) -> bool:
    """Whether the training forward can store states every ``tb`` steps: chunk starts fall on lane
    boundaries and each block of 32·K steps holds whole chunks."""
    K = (config or CONFIG)[0]
    return tb > 0 and tb % K == 0 and (32 * K) % tb == 0


def selective_scan_fwd_cuda_train(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
    initial_state: torch.Tensor | None, tb: int, ypre: torch.Tensor | None,
    config: tuple[int, int, int, int, bool, bool, bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training forward for ``triton_bwd.selective_scan_bwd_time``: y, the final state and the state
    entering every ``tb`` steps, (B, cdiv(L, tb), D, N) fp32 (what ``selective_scan_fwd`` with variant
    "time2", ``store_states`` and ``chunk=tb`` stores); with z, ``ypre`` (laid out as y) receives the
    pre-gate output. Needs ``supports_store(tb)``."""
    if not supports_store(tb, config):
        raise ValueError(f"the CUDA forward cannot store states every {tb} steps with config {config or CONFIG}")
    if ypre is not None and (z is None or ypre.shape != u.shape or ypre.dtype != u.dtype or not ypre.is_contiguous()):
        raise ValueError("ypre must be a contiguous (B, D, L) tensor in u's dtype, with z")
    return _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config, tb, ypre)


def _outputs_and_args(u, delta, A, B, C, D, z, delta_bias, initial_state, store_tb, ypre):
    """The forward's outputs (y, the final state, the stored states or None), the kernel's ``Args`` for
    them, whether every row takes 16-byte accesses, and the fp32 copies the ``Args`` point to (the caller
    holds them until the launch); shared by this kernel and ``cuda_serial``'s."""
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
    vec = _vec_ok(u.element_size(), u, delta, z, y, ypre) and _vec_ok(B.element_size(), B, C)
    ptrs = [t.data_ptr() for t in (u, delta, A32, B, C, D32, zt, b32, h0, y, final,
                                    states if states is not None else final, ypre if ypre is not None else y)]
    strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), A32.stride(0), A32.stride(1),
               B.stride(0), B.stride(1), C.stride(0), C.stride(1), zt.stride(0), zt.stride(1),
               y.stride(0), y.stride(1))
    return y, final, states, _Args(*ptrs, Dm, N, L, nch, *strides), vec, (A32, D32, b32, h0)


def _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config, store_tb, ypre):
    """Runs the default layout (``config`` None) or this kernel with ``config``, and records which ran
    (``selective_scan:cuda-serial`` or ``selective_scan:cuda``, for the cost probe)."""
    if config is None:  # the default: the state-split layout where it takes the shape (NOTES.md v12)
        from . import cuda_serial

        if cuda_serial.use(A.shape[1], store_tb, u.shape[0] * u.shape[1], u.device):
            out = cuda_serial.launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, None,
                                     store_tb, ypre)
            note_variant("selective_scan", "cuda-serial")
            return out
    K, rows, warps, unroll_n, bc32, two_pass, prefetch = config or CONFIG
    if bc32:  # B, C read as float32 (2·L·N floats, small next to u, Δ, z, y): no conversions per state
        B, C = B.to(torch.float32).contiguous(), C.to(torch.float32).contiguous()
    y, final, states, args, vec, _keep = _outputs_and_args(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                           store_tb, ypre)
    src = source(u.dtype, B.dtype, K, rows, warps, unroll_n, two_pass, prefetch, has_d=D is not None,
                 has_z=z is not None, has_bias=delta_bias is not None, softplus=delta_softplus,
                 has_h0=initial_state is not None, vec=vec, store_tb=store_tb if store_tb else 0)
    f = _function(u.device, src)
    batch, Dm = u.shape[:2]
    grid = (-(-Dm // (rows * warps)), batch, 1)
    launch(f, u.device, grid, 32 * warps, args)
    note_variant("selective_scan", "cuda")
    return y, final, states
