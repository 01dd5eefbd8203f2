"""Offline SASS of the time-layout selective-scan kernels, on a machine without a GPU: compile for
sm_90 with the ptxas that ships in Triton's wheel, then count registers, stack and, per loop of the
SASS (a backward branch), the instructions by opcode. Pointer, stride and length arguments are
marked 16-divisible and the L strides 1, as the GPU's specialisation sees them for contiguous
(B, D, L) inputs. This is the local Triton (3.9 here), not the GPU's 3.6: read the counts as
comparisons and as per-element budgets, not as what the H200 runs (kernels/NOTES.md v6, v7).

    PYTHONPATH=. python kernels/sass_count.py bwd 128 4 1       # the time backward (TB, BD, warps)
    PYTHONPATH=. python kernels/sass_count.py fwd 128 4 1       # time2, inference
    PYTHONPATH=. python kernels/sass_count.py train 128 4 1     # time2 storing states and the pre-gate y
    PYTHONPATH=.:<dir with nvidia/cuda_nvrtc> python kernels/sass_count.py cuda 16 2 4   # the CUDA C++ forward
        (K, ROWS, warps; compiled by NVRTC: unzip the nvidia-cuda-nvrtc-cu12 wheel into that dir;
        SASS_BC32=1 fp32 B/C, SASS_TWO_PASS=1, SASS_NO_PREFETCH=1)
    PYTHONPATH=.:<same> python kernels/sass_count.py serial 4 16 4    # the state-split CUDA forward (S, K, warps;
        SASS_TB=256 with the training stores, SASS_NO_PIPE=1 unpipelined, SASS_BC32=1 fp32 B/C in shared memory)
    PYTHONPATH=.:<same> python kernels/sass_count.py cudabwd 8 2 4    # the CUDA C++ backward (K, ROWS, warps;
        SASS_V4=1 16-byte shared-memory slots and atomics; SASS_MINB=3 launch bounds asking 3 blocks per SM;
        SASS_PAIRBAR=1 one barrier per two states; SASS_TSCAN=1 the transposed scans; SASS_SBC=1 B / C
        staged in shared memory; SASS_SIN=1 the inputs prefetched a block ahead)

SASS_TOP=40 lists the 40 most frequent opcodes per loop instead of 14; SASS_IR=file keeps the TTGIR; SASS_DUMP=file
the whole SASS.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from evalkit.kernels.selective_scan import triton as ss_fwd
from evalkit.kernels.selective_scan import triton_bwd as ss_bwd

BF16 = {"u_ptr", "dl_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "yp_ptr", "go_ptr", "gu_ptr", "gdl_ptr", "gz_ptr"}
L_STRIDES = {"sul", "sdl", "szl", "syl", "sgl", "sgul", "sgdl", "sgzl", "sbl", "scl"}
FLAGS = dict(N=16, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False, HAS_GT=False, BIG=False,
             UNROLL_N=False, STORE_STATES=False, STORE_Y=False)


def compile_sm90(kern, consts: dict, num_warps: int):
    names = list(inspect.signature(kern.fn).parameters)
    sig, const = {}, {}
    for n in names:
        if n.endswith("_ptr"):
            sig[n] = "*bf16" if n in BF16 else "*fp32"
        elif n in L_STRIDES:
            sig[n], const[n] = "constexpr", 1
        elif n in consts:
            sig[n], const[n] = "constexpr", consts[n]
        else:
            sig[n] = "i32"
    div16 = [i for i, n in enumerate(names) if sig[n] != "constexpr"
             and (n.endswith("_ptr") or n in ("Dm", "L") or n.startswith("s"))]
    src = triton.compiler.ASTSource(fn=kern, signature=sig,
                                    constexprs={(names.index(k),): v for k, v in const.items()},
                                    attrs={(i,): [["tt.divisibility", 16]] for i in div16})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kernel", choices=("bwd", "fwd", "train", "cuda", "cudabwd", "serial"))
    ap.add_argument("TB", type=int)
    ap.add_argument("BD", type=int)
    ap.add_argument("warps", type=int)
    ap.add_argument("unroll_n", type=int, nargs="?", default=1, help="cuda: the state loop's unroll")
    a = ap.parse_args()
    if a.kernel == "cuda":  # TB = steps per lane K, BD = channels per warp
        from evalkit.kernels.selective_scan import cuda as ss_cuda
        import torch

        tbc = torch.float32 if os.environ.get("SASS_BC32") else torch.bfloat16  # B, C pre-converted
        src = ss_cuda.source(torch.bfloat16, tbc, a.TB, a.BD, a.warps, a.unroll_n,
                             bool(os.environ.get("SASS_TWO_PASS")), not os.environ.get("SASS_NO_PREFETCH"),
                             has_d=True, has_z=True, has_bias=True, softplus=True, has_h0=False)
        return report(ss_cuda.compile_source(src, "90"), f"cuda K {a.TB} ROWS {a.BD} warps {a.warps} "
                      f"unroll {a.unroll_n} (NVRTC, sm_90)", a.TB * a.BD)
    if a.kernel == "serial":  # the state-split CUDA forward: TB = states per lane S, BD = steps per block K
        from evalkit.kernels.selective_scan import cuda as ss_cuda, cuda_serial
        import torch

        src = cuda_serial.source(torch.bfloat16, torch.bfloat16, 16, a.TB, a.BD, a.warps,
                                 not os.environ.get("SASS_NO_PIPE"), not os.environ.get("SASS_BC32"),
                                 has_d=True, has_z=True, has_bias=True, softplus=True, has_h0=False,
                                 store_tb=int(os.environ.get("SASS_TB", 0)))
        return report(ss_cuda.compile_source(src, "90"), f"cuda serial S {a.TB} K {a.BD} warps {a.warps} "
                      "(NVRTC, sm_90; per lane and block: K steps x S states)", a.BD * a.TB / 16)
    if a.kernel == "cudabwd":  # the CUDA backward: TB = K, BD = ROWS
        from evalkit.kernels.selective_scan import cuda as ss_cuda, cuda_bwd
        import torch

        src = cuda_bwd.source(torch.bfloat16, torch.bfloat16, a.TB, a.BD, a.warps, bool(os.environ.get("SASS_V4")),
                              int(os.environ.get("SASS_MINB", 1)), bool(os.environ.get("SASS_PAIRBAR")),
                              bool(os.environ.get("SASS_TSCAN")), bool(os.environ.get("SASS_SBC")),
                              bool(os.environ.get("SASS_SIN")), has_d=True,
                              has_z=True, has_bias=True, softplus=True, vec=True)
        return report(ss_cuda.compile_source(src, "90"), f"cuda bwd K {a.TB} ROWS {a.BD} warps {a.warps} "
                      "(NVRTC, sm_90)", a.TB * a.BD)
    consts = {**FLAGS, "TB": a.TB, "BD": a.BD}
    if a.kernel == "train":
        consts.update(STORE_STATES=True, STORE_Y=True)
    kern = ss_bwd._selective_scan_bwd_tkernel if a.kernel == "bwd" else ss_fwd._selective_scan_tkernel2
    k = compile_sm90(kern, consts, a.warps)
    if os.environ.get("SASS_IR"):  # also keep the TTGIR there (layouts, conversions through shared memory)
        with open(os.environ["SASS_IR"], "w") as f:
            f.write(k.asm["ttgir"])
    report(k.asm["cubin"], f"{a.kernel} TB {a.TB} BD {a.BD} warps {a.warps} (triton {triton.__version__}, sm_90)",
           a.TB * a.BD // (32 * a.warps))


def report(image: bytes, title: str, per_thread: int) -> None:
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(image)
        res = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", cubin], capture_output=True, text=True)
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    if os.environ.get("SASS_DUMP"):  # the whole SASS, to read a loop's instructions
        with open(os.environ["SASS_DUMP"], "w") as f:
            f.write(sass)
    usage = re.search(r"REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+", res.stdout)
    print(f"{title}: {usage.group(0) if usage else res.stdout[-200:]}")
    ins = []
    for line in sass.splitlines():
        m = re.search(r"/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)([^;]*);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(3).split(".")[0], m.group(4)))
    print(f"static instructions {len(ins)}; per block each thread holds {per_thread} (t, d) pairs "
          f"x {FLAGS['N']} states")
    for addr, op, rest in ins:
        t = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if t and int(t.group(1), 16) < addr:
            start = int(t.group(1), 16)
            ops = collections.Counter(o for x, o, _ in ins if start <= x <= addr)
            n = sum(ops.values())
            print(f"loop {start:#x}-{addr:#x}: {n} instructions ({n / per_thread:.1f} per (t, d) pair per pass); "
                  + ", ".join(f"{o} {c}" for o, c in ops.most_common(int(os.environ.get("SASS_TOP", 14)))))


if __name__ == "__main__":
    main()
