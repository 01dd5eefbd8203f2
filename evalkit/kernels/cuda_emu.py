"""The CUDA C++ kernels run on the CPU, for tests: what ``TRITON_INTERPRET=1`` is to the Triton kernels.

The selective-scan CUDA kernels (``selective_scan.cuda``, ``cuda_serial``, ``cuda_bwd``) are NVRTC sources; before
this module they ran only on a GPU, so CI checked that they compile and nothing more (kernels/NOTES.md v16). Here
the same source is compiled by the host's C++ compiler against ``PRELUDE`` — the CUDA built-ins they use, written
for the CPU — and launched through ctypes on CPU tensors (``function``, used by ``cuda._function`` for a CPU device):

- every CUDA thread of a block is a fiber with its own stack (a guard page below it); one OS thread runs the block's
  fibers in turn, switching at barriers (on x86-64 by a switch of the callee-saved registers, else ``ucontext``),
  so ``__syncthreads``, ``__syncwarp`` and the warp shuffles are exact, and blocks run one after another;
- shuffles go through a per-warp exchange; a shuffle or ``__syncwarp`` whose mask names a lane that has exited, a
  mask other than the whole warp, and a barrier that can never complete (a deadlock, e.g. ``__syncthreads`` in divergent code) raise
  ``EmulatorError`` naming the block, thread and built-in;
- dynamic shared memory starts filled with 0xff bytes (NaN as fp32) and has a canary zone after its end: a read of
  shared memory nothing wrote, or past the end, gives NaN; a write past the end raises;
- ``cp.async`` is deferred: the destination is filled with 0xff when a copy is issued and the bytes land only when
  a ``wait_group`` / ``wait_all`` retires its group, so a read before the wait (or before the barrier after another
  thread's wait) sees NaN; misaligned copies and copies outside shared memory raise;
- the PTX helpers the kernels define in one place (``cuda.HELPERS``, guarded by ``EVALKIT_HOST``) get host versions:
  ex2 / lg2 / rcp by the C library, the 16-bit conversions rounding to nearest even, atomics as plain adds;
- ``EVALKIT_CUDA_EMU_ASAN=1`` compiles with AddressSanitizer, which then checks every access to the tensors (global
  memory) as well; the process must load ASan's runtime first (``LD_PRELOAD``, see ``_ASAN``).

What it cannot show: timing; and a data race only where the schedule decides it — a fiber runs until it blocks, so
between two barriers each thread's code runs whole, in thread order by default; ``EVALKIT_CUDA_EMU_ORDER`` picks
other schedules (``order``), whose greedy ones expose a missing barrier between a writer and a later reader. It models
an sm_90 part (``CAPABILITY``, ``SMS``), so a kernel built for the emulator takes sm_90's paths (16-byte atomics).
It needs a C++17 compiler (``$CXX``, else g++ / c++); each specialisation is compiled once into
``$XDG_CACHE_HOME/evalkit/cuda_emu`` (under a second), keyed by the hash of its text and flags.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

CAPABILITY = (9, 0)  # what the emulated device reports (an H100 / H200)
SMS = 132

PRELUDE = r"""
#define EVALKIT_HOST 1
#include <math.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#endif

#if defined(__x86_64__)
// A fiber switch that saves only the callee-saved registers (ucontext's also saves the signal mask: a system call
// per switch, most of the emulator's time): the current stack pointer into *save, then run on stack sp.
extern "C" void evalkit_emu_switch(void** save, void* sp);
asm(R"(
.text
.hidden evalkit_emu_switch
.globl evalkit_emu_switch
.type evalkit_emu_switch, @function
evalkit_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size evalkit_emu_switch, .-evalkit_emu_switch
)");
#endif

namespace evalkit_emu {

struct Dim3 { unsigned x, y, z; };
struct Copy { char* dst; const char* src; int n; };
struct Barrier { int members = 0, arrived = 0; unsigned gen = 0; };

struct Thread {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    Dim3 idx;
    int warp = 0, lane = 0;
    bool done = false;
    Barrier* waiting = nullptr;
    unsigned wait_gen = 0;
    const char* where = "";
    std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
    std::vector<Copy> open;                 // issued, not yet committed
};

constexpr int CANARY = 4096;  // bytes after the end of shared memory

struct Launch {
    Dim3 block_idx, block_dim, grid_dim;
    std::vector<Thread> th;
    std::vector<Barrier> warp_bar;
    Barrier block_bar;
    std::vector<unsigned long long> slot;  // [warp][generation parity][lane]: the shuffles' exchange
    std::vector<unsigned char> slot_ok;
    std::vector<char> smem;
    size_t smem_size = 0;
    char* stacks = nullptr;
    size_t stack_bytes = 0, stack_span = 0;
#if defined(__x86_64__)
    void* sched = nullptr;
#else
    ucontext_t sched;
#endif
    std::string error;
    void (*body)(const void*) = nullptr;
    const void* args = nullptr;
    unsigned order = 0;
};

thread_local Launch* L_ = nullptr;
thread_local Thread* cur = nullptr;

// the running fiber hands control back to the block's scheduler, which resumes it (or not) later
inline void to_sched() {
#if defined(__x86_64__)
    evalkit_emu_switch(&cur->sp, L_->sched);
#else
    swapcontext(&cur->ctx, &L_->sched);
#endif
}

inline void to_thread(Thread& t) {
#if defined(__x86_64__)
    evalkit_emu_switch(&L_->sched, t.sp);
#else
    swapcontext(&L_->sched, &t.ctx);
#endif
}

[[noreturn]] inline void fail(const std::string& what) {
    Launch& l = *L_;
    if (l.error.empty()) {
        char where[160];
        std::snprintf(where, sizeof where, " (block (%u, %u, %u), thread %u)", l.block_idx.x, l.block_idx.y,
                      l.block_idx.z, cur ? cur->idx.x : 0u);
        l.error = what + where;
    }
    cur->done = true;
    for (;;) to_sched();  // the scheduler sees the error and stops the launch; this fiber is abandoned
}

inline void release(Barrier& b) { b.arrived = 0; ++b.gen; }

inline void release_warp(int w) {
    Launch& l = *L_;
    release(l.warp_bar[w]);
    // the other parity's values were all read before anyone arrived here: the next exchange writes there
    std::memset(&l.slot_ok[(w * 2 + (l.warp_bar[w].gen & 1)) * 32], 0, 32);
}

inline void wait_on(Barrier& b, unsigned gen, const char* where) {
    cur->waiting = &b;
    cur->wait_gen = gen;
    cur->where = where;
    to_sched();
}

inline void arrive_warp(const char* where) {
    Launch& l = *L_;
    const int w = cur->warp;
    Barrier& b = l.warp_bar[w];
    const unsigned gen = b.gen;
    if (++b.arrived >= b.members) { release_warp(w); return; }
    wait_on(b, gen, where);
}

inline void arrive_block() {
    Barrier& b = L_->block_bar;
    const unsigned gen = b.gen;
    if (++b.arrived >= b.members) { release(b); return; }
    wait_on(b, gen, "__syncthreads");
}

inline void check_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu) fail(std::string(what) + ": the emulator takes whole-warp masks only");
    const Launch& l = *L_;
    const int w = cur->warp, size = (w + 1) * 32 <= (int)l.block_dim.x ? 32 : (int)l.block_dim.x - w * 32;
    if (l.warp_bar[w].members < size)  // undefined on the GPU: the mask names lanes that are gone
        fail(std::string(what) + ": the mask names lanes of this warp that have exited");
}

template <class T>
inline T exchange(T v, int src, bool from_src, const char* what) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Launch& l = *L_;
    const int w = cur->warp, lane = cur->lane;
    const size_t base = (size_t)(w * 2 + (l.warp_bar[w].gen & 1)) * 32;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    l.slot[base + lane] = bits;
    l.slot_ok[base + lane] = 1;
    arrive_warp(what);
    if (!from_src) return v;
    if (!l.slot_ok[base + src])
        fail(std::string(what) + ": lane " + std::to_string(lane) + " reads lane " + std::to_string(src)
             + ", which has exited");
    T r;
    std::memcpy(&r, &l.slot[base + src], sizeof(T));
    return r;
}

inline void check_shared(const void* p, int n, int align, const char* what) {
    const char* c = static_cast<const char*>(p);
    const Launch& l = *L_;
    if (c < l.smem.data() || c + n > l.smem.data() + l.smem_size)
        fail(std::string(what) + ": the destination is not in the block's shared memory");
    if (((uintptr_t)p) % align) fail(std::string(what) + ": misaligned destination");
}

inline void cp_async(void* dst, const void* src, int n, const char* what) {
    check_shared(dst, n, n, what);
    if (((uintptr_t)src) % n) fail(std::string(what) + ": misaligned source");
    std::memset(dst, 0xff, n);  // undefined until the copy's group is waited for
    cur->open.push_back(Copy{static_cast<char*>(dst), static_cast<const char*>(src), n});
}

inline void cp_retire(size_t keep) {
    auto& g = cur->groups;
    while (g.size() > keep) {
        for (const Copy& c : g.front()) std::memcpy(c.dst, c.src, c.n);
        g.erase(g.begin());
    }
}

inline void* dyn_smem() { return L_->smem.data(); }

static void trampoline() {
    Launch& l = *L_;
    l.body(l.args);
    Thread& t = *cur;
    t.done = true;
    // an exited thread leaves its barriers: those whose other members all wait are released
    Barrier& wb = l.warp_bar[t.warp];
    if (--wb.members > 0 && wb.arrived >= wb.members) release_warp(t.warp);
    if (--l.block_bar.members > 0 && l.block_bar.arrived >= l.block_bar.members) release(l.block_bar);
#if defined(__x86_64__)
    for (;;) to_sched();  // never resumed: the scheduler counts it done
#endif
}

inline void start(Launch& l, Thread& t, char* stack) {
#if defined(__x86_64__)
    // the first switch to the fiber pops six zero registers and "returns" into trampoline, whose frame then sits as
    // if called (the stack pointer 8 past a 16-byte boundary)
    void** top = reinterpret_cast<void**>(stack + l.stack_bytes);
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&trampoline);
    for (int i = 3; i <= 8; ++i) top[-i] = nullptr;
    t.sp = top - 8;
#else
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = stack;
    t.ctx.uc_stack.ss_size = l.stack_bytes;
    t.ctx.uc_link = &l.sched;
    makecontext(&t.ctx, trampoline, 0);
#endif
}

inline int run_block(Launch& l) {
    const int n = (int)l.block_dim.x, warps = (n + 31) / 32;
    l.th.assign(n, Thread());
    l.warp_bar.assign(warps, Barrier());
    for (int w = 0; w < warps; ++w) l.warp_bar[w].members = (w + 1) * 32 <= n ? 32 : n - w * 32;
    l.block_bar = Barrier();
    l.block_bar.members = n;
    l.slot.assign((size_t)warps * 2 * 32, 0);
    l.slot_ok.assign((size_t)warps * 2 * 32, 0);
    std::memset(l.smem.data(), 0xff, l.smem.size());
    for (int i = 0; i < n; ++i) {
        Thread& t = l.th[i];
        t.idx = Dim3{(unsigned)i, 0u, 0u};
        t.warp = i / 32;
        t.lane = i % 32;
        start(l, t, l.stacks + (size_t)i * l.stack_span + 4096);  // a guard page below each stack
    }
    // which runnable fiber gets the processor (``order``): 0 round robin in thread order, 1 round robin reversed —
    // the warps then advance in near lockstep, a shuffle at a time; 2 (3) greedy: the first (last) warp runs until
    // it blocks at a block barrier or ends, then the next; k >= 4 greedy in a pseudo-random thread order per block.
    // A kernel whose result depends on the order has a race that its barriers leave open.
    std::vector<int> perm(n);
    for (int i = 0; i < n; ++i) perm[i] = (l.order == 1 || l.order == 3) ? n - 1 - i : i;
    if (l.order >= 4) {
        unsigned long long x = l.order * 0x9e3779b97f4a7c15ull + l.block_idx.x * 31 + l.block_idx.y * 131 + 1;
        for (int i = n - 1; i > 0; --i) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            const int j = (int)(x % (unsigned long long)(i + 1));
            const int tmp = perm[i]; perm[i] = perm[j]; perm[j] = tmp;
        }
    }
    const bool greedy = l.order >= 2;
    int alive = n;
    while (alive > 0) {
        bool ran = false;
        for (int p = 0; p < n; ++p) {
            Thread& t = l.th[perm[p]];
            if (t.done || (t.waiting != nullptr && t.waiting->gen == t.wait_gen)) continue;
            t.waiting = nullptr;
            cur = &t;
            to_thread(t);
            ran = true;
            if (!l.error.empty()) return 1;
            if (t.done) --alive;
            if (greedy) break;  // from the top of the order again
        }
        if (!ran) {
            std::string w;
            int shown = 0;
            for (const Thread& t : l.th)
                if (!t.done && shown++ < 4) w += " thread " + std::to_string(t.idx.x) + " at " + t.where + ";";
            char head[128];
            std::snprintf(head, sizeof head, "deadlock in block (%u, %u, %u): %d threads wait forever:",
                          l.block_idx.x, l.block_idx.y, l.block_idx.z, alive);
            l.error = head + w;
            return 1;
        }
    }
    for (int i = 0; i < CANARY; ++i)
        if ((unsigned char)l.smem[l.smem_size + i] != 0xff) {
            char msg[128];
            std::snprintf(msg, sizeof msg, "a write past the end of the %zu bytes of shared memory "
                          "(block (%u, %u, %u))", l.smem_size, l.block_idx.x, l.block_idx.y, l.block_idx.z);
            l.error = msg;
            return 1;
        }
    return 0;
}

inline int launch(unsigned gx, unsigned gy, unsigned gz, unsigned block, unsigned long long shared,
                  void (*body)(const void*), const void* args, unsigned order, char* err, int errlen) {
    Launch l;
    l.order = order;
    l.block_dim = Dim3{block, 1u, 1u};
    l.grid_dim = Dim3{gx, gy, gz};
    l.body = body;
    l.args = args;
    l.smem_size = shared;
    l.smem.assign(shared + CANARY, (char)0xff);
    l.stack_bytes = 256 * 1024;
    l.stack_span = l.stack_bytes + 4096;
    void* m = mmap(nullptr, l.stack_span * block, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { std::snprintf(err, errlen, "no memory for %u fiber stacks", block); return 1; }
    l.stacks = static_cast<char*>(m);
    for (unsigned i = 0; i < block; ++i) mprotect(l.stacks + (size_t)i * l.stack_span, 4096, PROT_NONE);
    Launch* outer = L_;
    L_ = &l;
    int rc = 0;
    for (unsigned z = 0; z < gz && rc == 0; ++z)
        for (unsigned y = 0; y < gy && rc == 0; ++y)
            for (unsigned x = 0; x < gx && rc == 0; ++x) {
                l.block_idx = Dim3{x, y, z};
                rc = run_block(l);
            }
    L_ = outer;
    cur = nullptr;
#if defined(__SANITIZE_ADDRESS__)
    // frames that never returned (finished or abandoned fibers) leave poisoned stack shadow behind
    __asan_unpoison_memory_region(m, l.stack_span * block);
#endif
    munmap(m, l.stack_span * block);
    if (rc) std::snprintf(err, errlen, "%s", l.error.c_str());
    return rc;
}

template <class A>
inline void call(void (*k)(A), const void* p) { k(*static_cast<const std::remove_cv_t<A>*>(p)); }

}  // namespace evalkit_emu

#define threadIdx (::evalkit_emu::cur->idx)
#define blockIdx (::evalkit_emu::L_->block_idx)
#define blockDim (::evalkit_emu::L_->block_dim)
#define gridDim (::evalkit_emu::L_->grid_dim)

inline void __syncthreads() { ::evalkit_emu::arrive_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::evalkit_emu::check_mask(mask, "__syncwarp");
    ::evalkit_emu::arrive_warp("__syncwarp");
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    ::evalkit_emu::check_mask(mask, "__shfl_sync");
    const int lane = ::evalkit_emu::cur->lane;
    return ::evalkit_emu::exchange(v, (lane & ~(width - 1)) + (src & (width - 1)), true, "__shfl_sync");
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    ::evalkit_emu::check_mask(mask, "__shfl_up_sync");
    const int lane = ::evalkit_emu::cur->lane;
    return ::evalkit_emu::exchange(v, lane - (int)delta, (lane & (width - 1)) >= (int)delta, "__shfl_up_sync");
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    ::evalkit_emu::check_mask(mask, "__shfl_down_sync");
    const int lane = ::evalkit_emu::cur->lane;
    return ::evalkit_emu::exchange(v, lane + (int)delta, (lane & (width - 1)) + (int)delta < width,
                                   "__shfl_down_sync");
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
    ::evalkit_emu::check_mask(mask, "__shfl_xor_sync");
    const int lane = ::evalkit_emu::cur->lane, src = lane ^ m;
    return ::evalkit_emu::exchange(v, src, (src & ~(width - 1)) == (lane & ~(width - 1)), "__shfl_xor_sync");
}

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T> inline T __ldg(const T* p) { return *p; }
inline float atomicAdd(float* p, float v) { const float o = *p; *p = o + v; return o; }

// the host versions of cuda.HELPERS' PTX functions
inline float f16_bits_to_f32(unsigned short x) { _Float16 h; std::memcpy(&h, &x, 2); return (float)h; }
inline unsigned short f32_to_f16_bits(float f) {  // round to nearest even
    const _Float16 h = (_Float16)f;
    unsigned short r;
    std::memcpy(&r, &h, 2);
    return r;
}
inline unsigned short f32_to_bf16_bits(float f) {  // round to nearest even; NaN stays NaN
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
inline float ex2(float x) { return std::exp2(x); }
inline float lg2(float x) { return std::log2(x); }
inline float rcp(float x) { return 1.f / x; }
// a shared-memory address is the offset into the block's shared memory (only dynamic shared memory exists here)
inline unsigned shared_addr(const void* p) {
    const char* c = static_cast<const char*>(p);
    const ::evalkit_emu::Launch& l = *::evalkit_emu::L_;
    if (c < l.smem.data() || c > l.smem.data() + l.smem_size) ::evalkit_emu::fail("shared_addr: not shared memory");
    return (unsigned)(c - l.smem.data());
}
inline void cp_async16(unsigned dst, const void* src) {
    ::evalkit_emu::cp_async(::evalkit_emu::L_->smem.data() + dst, src, 16, "cp.async.cg");
}
template <int BYTES> inline void cp_async_ca(unsigned dst, const void* src) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    ::evalkit_emu::cp_async(::evalkit_emu::L_->smem.data() + dst, src, BYTES, "cp.async.ca");
}
inline void cp_commit() {
    auto& t = *::evalkit_emu::cur;
    t.groups.push_back(t.open);
    t.open.clear();
}
inline void cp_wait_one() { ::evalkit_emu::cp_retire(1); }
inline void cp_wait_all() { cp_commit(); ::evalkit_emu::cp_retire(0); }
inline void red_add_v4(float* p, float a, float b, float c, float d) {
    if (((uintptr_t)p) % 16) ::evalkit_emu::fail("red.global.add.v4.f32: misaligned address");
    p[0] += a; p[1] += b; p[2] += c; p[3] += d;
}
"""

LAUNCHER = r"""
static void evalkit_emu_body(const void* a) { ::evalkit_emu::call(EVALKIT_EMU_KERNEL, a); }
extern "C" int evalkit_emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned block, unsigned long long shared,
                                  const void* args, unsigned order, char* err, int errlen) {
    return ::evalkit_emu::launch(gx, gy, gz, block, shared, evalkit_emu_body, args, order, err, errlen);
}
"""

# ``extern __shared__ [__align__(16)] T name[];``: the dynamic shared memory, a per-block buffer here
_DYN_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;")


def order() -> int:
    """The fibers' schedule, ``EVALKIT_CUDA_EMU_ORDER``: 0 round robin in thread order (the default), 1 reversed
    (the warps advance in near lockstep); 2 / 3 greedy, the first / last warp running until it blocks at a block
    barrier, then the next; k >= 4 greedy in the k-th pseudo-random thread order per block. Results that differ
    between orders (beyond the order of float atomics) show a race that the kernel's barriers leave open; the greedy
    orders expose a missing block barrier, which lockstep hides."""
    return int(os.environ.get("EVALKIT_CUDA_EMU_ORDER", "0"))


class EmulatorError(RuntimeError):
    """The emulated kernel did something a GPU would not survive, or that is undefined there (see the module)."""


class EmulatorCompileError(RuntimeError):
    """The host compiler refused the kernel source."""


def compiler() -> str | None:
    """The C++ compiler the emulator uses: ``$CXX``, else g++, else c++ (None: the emulator is unavailable)."""
    for c in (os.environ.get("CXX"), "g++", "c++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def available() -> bool:
    return compiler() is not None


def host_source(src: str, name: str) -> str:
    """The kernel source as the host compiler takes it: the prelude, the source with its dynamic shared memory
    made a pointer, and the launcher calling ``name``."""
    body = _DYN_SMEM.sub(r"\1* \2 = reinterpret_cast<\1*>(::evalkit_emu::dyn_smem());", src)
    return PRELUDE + body + f"\n#define EVALKIT_EMU_KERNEL {name}\n" + LAUNCHER


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.path.join(base, "evalkit", "cuda_emu")
    try:
        os.makedirs(d, exist_ok=True)
        return d
    except OSError:  # a read-only home: a per-process directory
        return tempfile.mkdtemp(prefix="evalkit-cuda-emu-")


_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-fno-strict-aliasing", "-w")
# EVALKIT_CUDA_EMU_ASAN=1: AddressSanitizer checks every access of the kernels to the tensors (global memory) and to
# shared memory; the Python process must load the runtime first (LD_PRELOAD=$(g++ -print-file-name=libasan.so)
# ASAN_OPTIONS=detect_leaks=0)
_ASAN = ("-fsanitize=address", "-fno-omit-frame-pointer")


def _flags() -> tuple[str, ...]:
    return _FLAGS + (_ASAN if os.environ.get("EVALKIT_CUDA_EMU_ASAN") == "1" else ())


def build(src: str, name: str) -> str:
    """Compile the kernel ``name`` of ``src`` for the host (once per source: the library is cached by the hash of
    its text and flags); returns the shared library's path."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorCompileError("the CUDA emulator needs a C++ compiler (set CXX, or install g++)")
    text = host_source(src, name)
    flags = _flags()
    key = hashlib.sha256("\0".join((text, cxx, *flags)).encode()).hexdigest()[:32]
    d = _cache_dir()
    so = os.path.join(d, f"{key}.so")
    if os.path.exists(so):
        return so
    cpp = os.path.join(d, f"{key}.{os.getpid()}.cpp")
    tmp = os.path.join(d, f"{key}.{os.getpid()}.so")
    with open(cpp, "w") as f:
        f.write(text)
    try:
        res = subprocess.run([cxx, *flags, "-o", tmp, cpp], capture_output=True, text=True)
        if res.returncode != 0:
            raise EmulatorCompileError(f"{cxx} could not compile {name} for the CPU emulator:\n{res.stderr[-4000:]}")
        os.replace(tmp, so)  # atomic: concurrent builders of one source leave one library
    finally:
        for p in (cpp, tmp):
            if os.path.exists(p):
                os.remove(p)
    return so


class Function:
    """An emulated kernel, called as ``cuda._Function`` is: ``f(grid, block, args, stream, shared=...)``."""

    def __init__(self, path: str, name: str) -> None:
        self.name = name
        self._lib = ctypes.CDLL(path)
        self._launch = self._lib.evalkit_emu_launch
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong,
                                 ctypes.c_void_p, ctypes.c_uint, ctypes.c_char_p, ctypes.c_int]

    def __call__(self, grid: tuple[int, int, int], block: int, args: ctypes.Structure, stream: object = None,
                 shared: int = 0) -> None:
        err = ctypes.create_string_buffer(1024)
        rc = self._launch(grid[0], grid[1], grid[2], block, shared, ctypes.cast(ctypes.byref(args), ctypes.c_void_p),
                          order(), err, len(err))
        if rc:
            raise EmulatorError(f"{self.name}: {err.value.decode(errors='replace')}")


@functools.lru_cache(maxsize=256)
def function(src: str, name: str) -> Function:
    """The emulated kernel ``name`` of the CUDA source ``src``."""
    return Function(build(src, name), name)
