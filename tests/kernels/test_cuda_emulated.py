"""The CUDA C++ selective-scan kernels (time-parallel and state-split forwards, the backward with every option)
against the reference on the CPU, under ``evalkit.kernels.cuda_emu`` — the source NVRTC compiles for the GPU,
compiled by the host's C++ compiler with exact barriers and shuffles, deferred cp.async and poisoned shared memory
(the emulator's docstring). Small shapes: ragged and whole blocks, N 4-32, channels not a multiple of a block. The
GPU files (test_selective_scan_cuda*.py) run the full grid on the H200; these run everywhere, CI included, and are
what checks a kernel option that has not yet run on a GPU. The emulator's own checks are tested at the end."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from evalkit.kernels import cuda_emu, dispatch
from evalkit.kernels.selective_scan import cuda as ss_cuda
from evalkit.kernels.selective_scan import cuda_bwd, cuda_serial, selective_scan, selective_scan_ref
from tests.kernels.scan_cases import inputs as _inputs, mixer_views_grads, ref as _ref, rel as _rel
from tests.kernels.test_selective_scan_cuda import BWD_CONFIGS, CONFIGS, _bwd_pair, _cfg_id
from tests.kernels.test_selective_scan_cuda import CASES as GPU_CASES
from tests.kernels.test_selective_scan_cuda_serial import CONFIGS as SERIAL_CONFIGS, _cfg_id as _serial_id, _run

if not cuda_emu.available() and os.environ.get("EVALKIT_REQUIRE_CXX") == "1":  # CI: must run (.ci/run)
    raise RuntimeError("EVALKIT_REQUIRE_CXX=1 but there is no C++ compiler for the CUDA emulator (CXX, g++, c++)")
pytestmark = pytest.mark.skipif(not cuda_emu.available(), reason="the CUDA emulator needs a C++ compiler")

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
GTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (batch, channels, L, state): a ragged block only; whole 16-byte rows with a ragged last block (L 1000 is
# 16-byte aligned in 16-bit types); N 4 and 32; a length shorter than the serial kernel's block
CASES = [(1, 8, 63, 16), (1, 4, 1000, 16), (2, 3, 37, 4), (1, 7, 272, 32), (1, 3, 9, 16)]
# EVALKIT_EMU_FULL=1: the GPU files' cases instead (up to 2 × 130 channels × 4096 steps; 19 minutes on two cores)
FULL = os.environ.get("EVALKIT_EMU_FULL") == "1"
FWD_CASES = GPU_CASES + [CASES[4]] if FULL else CASES[:4]
SERIAL_CASES = GPU_CASES + [CASES[4]] if FULL else [CASES[0], CASES[1], CASES[2], CASES[4]]
BWD_CASES = GPU_CASES if FULL else [None]  # None: (2, 11, 600, 16), at K 16 (2, 6, 1100, 16)
_case_id = "B{}-D{}-L{}-N{}".format
_dt_id = lambda d: str(d)[6:]  # noqa: E731


def _forward_checks(run, case, dtype):
    b, d, L, n = case
    t = _inputs(b, d, L, n, dtype, seed=L + d, dev="cpu")
    h0 = torch.randn(b, d, n)
    y_ref, h_ref = _ref(t, initial_state=h0)
    y, hT = run(t, h0=h0)
    assert y.dtype == dtype and hT.dtype == torch.float32
    assert _rel(y, y_ref) < TOL[dtype] and _rel(hT, h_ref) < 1e-4
    bare = _inputs(b, d, L, n, dtype, seed=L + d, full=False, dev="cpu")
    bare["delta"] = torch.nn.functional.softplus(bare["delta"].float()).to(dtype)
    y_ref, h_ref = _ref(bare, delta_softplus=False)
    y, hT = run(bare, softplus=False)
    assert _rel(y, y_ref) < TOL[dtype] and _rel(hT, h_ref) < 1e-4


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt_id)
@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: _case_id(*c))
def test_time_parallel_forward(case, dtype, cfg):
    def run(t, h0=None, softplus=True):
        return ss_cuda.selective_scan_fwd_cuda(**t, delta_softplus=softplus, initial_state=h0, config=cfg)

    _forward_checks(run, case, dtype)


@pytest.mark.parametrize("cfg", SERIAL_CONFIGS, ids=_serial_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt_id)
@pytest.mark.parametrize("case", SERIAL_CASES, ids=lambda c: _case_id(*c))
def test_state_split_forward(case, dtype, cfg):
    if not cuda_serial.supports(case[3], cfg):
        pytest.skip(f"N {case[3]} is not split by {cfg}")

    def run(t, h0=None, softplus=True):
        return _run(t, cfg, softplus=softplus, h0=h0)[:2]

    _forward_checks(run, case, dtype)


@pytest.mark.parametrize("store_tb", [128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_dt_id)
def test_training_stores_agree_between_the_forwards(dtype, store_tb):
    """Both forwards store the state entering every store_tb steps and the pre-gate y; they agree, and their
    final states are the reference's."""
    b, d, L, n = 2, 9, 700, 16
    t = _inputs(b, d, L, n, dtype, seed=5, dev="cpu")
    h0 = torch.randn(b, d, n)
    yp, yp2 = torch.empty_like(t["u"]), torch.empty_like(t["u"])
    y, hT, st = _run(t, cuda_serial.CONFIG, h0=h0, store_tb=store_tb, ypre=yp)
    y2, hT2, st2 = ss_cuda.selective_scan_fwd_cuda_train(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                                         t["delta_bias"], True, h0, store_tb, yp2,
                                                         config=ss_cuda.CONFIG)
    assert st.shape == st2.shape == (b, -(-L // store_tb), d, n)
    assert _rel(st, st2) < 1e-5 and _rel(hT, hT2) < 1e-5 and _rel(hT, _ref(t, initial_state=h0)[1]) < 1e-4
    assert _rel(y, y2) < TOL[dtype] and _rel(yp, yp2) < TOL[dtype]


def _grads(t, h0, dtype):
    f = {k: v.float().requires_grad_(True) for k, v in {**t, "initial_state": h0}.items() if v is not None}
    yr, hr = selective_scan_ref(**f, return_final_state=True)
    gy = torch.randn_like(yr).to(dtype)
    gT = torch.randn_like(hr)
    gr = torch.autograd.grad((yr * gy.float()).sum() + (hr * gT).sum(), list(f.values()))
    return f, hr, gy, gT, gr


@pytest.mark.parametrize("cfg", BWD_CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt_id)
@pytest.mark.parametrize("case", BWD_CASES, ids=lambda c: "small" if c is None else _case_id(*c))
def test_backward_every_config(case, dtype, cfg):
    """Every backward config (the options that never ran on a GPU included) against the reference's autograd:
    three blocks of 32·K steps or more with a ragged last one, so SIN's prefetched blocks and the staging paths
    run; in 16-bit types at K 4 a lane's run is 8 bytes (the shared row loaders' narrower accesses)."""
    b, d, L, n = case or ((2, 11, 600, 16) if cfg[0] <= 8 else (2, 6, 1100, 16))
    t = _inputs(b, d, L, n, dtype, seed=L + n, dev="cpu")
    h0 = torch.randn(b, d, n)
    f, hr, gy, gT, gr = _grads(t, h0, dtype)
    _, hT, g = _bwd_pair(t, cfg, h0, gy, gT)
    assert _rel(hT, hr) < 1e-4
    ins = {**t, "initial_state": h0}
    for name, a, r in zip(f, g, gr):
        assert a.dtype == ins[name].dtype, name
        assert _rel(a, r) < GTOL[dtype], name


@pytest.mark.parametrize("cfg", [c for c in BWD_CONFIGS if any(cuda_bwd._full(c)[5:])] + [cuda_bwd.BWD_CONFIG],
                         ids=_cfg_id)
@pytest.mark.parametrize("n", [1, 5, 6])
def test_backward_odd_state_counts(cfg, n):
    """The state loop runs in pairs (PAIRBAR's barrier, SBC's staged pair): an odd N leaves a pair of one."""
    t = _inputs(1, 5, 300, n, torch.float32, seed=40 + n, dev="cpu")
    f, _, gy, gT, gr = _grads(t, None, torch.float32)
    _, _, g = _bwd_pair(t, cfg, None, gy, gT)
    for name, a, r in zip(f, g, gr):
        assert _rel(a, r) < 1e-4, name


@pytest.mark.parametrize("cfg", [c for c in BWD_CONFIGS if any(cuda_bwd._full(c)[7:])], ids=_cfg_id)
def test_backward_unaligned_bc(cfg):
    """B and C 2 bytes off 16-byte alignment: SBC stages them element by element and SIN stays off."""
    b, d, L, n = 1, 6, 600, 16
    t = _inputs(b, d, L, n, torch.bfloat16, seed=77, dev="cpu")
    for k in ("B", "C"):
        big = torch.zeros(b, n, L + 1, dtype=torch.bfloat16)
        big[..., 1:] = t[k]
        t[k] = big[..., 1:]
    assert not ss_cuda._vec_ok(2, t["B"], t["C"])
    f, _, gy, gT, gr = _grads(t, None, torch.bfloat16)
    _, _, g = _bwd_pair(t, cfg, None, gy, gT)
    for name, a, r in zip(f, g, gr):
        assert _rel(a, r) < 3e-2, name


SCHEDULED = [cuda_bwd.BWD_CONFIG, (8, 2, 4, True), (8, 2, 4, True, 3, True, False, True),
             (8, 2, 4, True, 1, True, True, True, True), (16, 1, 4, False, 1, False, False, False, True)]


@pytest.mark.parametrize("order", ["1", "2", "3", "6"])
def test_other_schedules(order, monkeypatch):
    """Under the emulator's other schedules (reversed round robin; greedy, first or last warp first; a pseudo-random
    order) the forwards and the backward's barrier, staging and prefetch options still match the reference: no race
    that the order of the threads decides."""
    monkeypatch.setenv("EVALKIT_CUDA_EMU_ORDER", order)
    b, d, L, n = 2, 11, 600, 16
    t = _inputs(b, d, L, n, torch.float32, seed=11, dev="cpu")
    y_ref, h_ref = _ref(t)
    for run in (lambda: _run(t, cuda_serial.CONFIG)[:2], lambda: _run(t, (4, 16, 4, False, True))[:2],
                lambda: ss_cuda.selective_scan_fwd_cuda(**t, config=ss_cuda.CONFIG)):
        y, hT = run()
        assert _rel(y, y_ref) < TOL[torch.float32] and _rel(hT, h_ref) < 1e-4
    f, _, gy, gT, gr = _grads(t, None, torch.float32)
    for cfg in SCHEDULED:
        _, _, g = _bwd_pair(t, cfg, None, gy, gT)
        for name, a, r in zip(f, g, gr):
            assert _rel(a, r) < 1e-4, (cfg, name)


def test_a_missing_barrier_is_caught(monkeypatch):
    """The kernel tests can fail: without the block barrier between the warps' slot writes and the block's reduction
    (one barrier per state, no PAIRBAR), a warp that runs ahead (here the greedy schedule runs warp 0 to its end
    first) reduces slots the other warps have not written."""
    old = "            __syncthreads();\n            slot_reduce<FULLV>(slots, buf, tid, tb, L, gBrow, gCrow);"
    assert cuda_bwd.SOURCE.count(old) == 1
    monkeypatch.setattr(cuda_bwd, "SOURCE", cuda_bwd.SOURCE.replace(old, old.split("\n")[1]))
    monkeypatch.setenv("EVALKIT_CUDA_EMU_ORDER", "2")
    cuda_bwd.source.cache_clear()
    try:
        t = _inputs(1, 8, 600, 16, torch.float32, seed=3, dev="cpu")
        _, _, gy, gT, _ = _grads(t, None, torch.float32)
        _, _, g = _bwd_pair(t, (8, 2, 4, True), None, gy, gT)
        assert not all(torch.isfinite(x).all() for x in g if x is not None)
    finally:
        monkeypatch.undo()
        cuda_bwd.source.cache_clear()


def test_a_missing_wait_is_caught(monkeypatch):
    """The kernel tests can fail: SBC without its cp.async wait before the barrier reads staged B / C that has
    not landed (the emulator fills it with NaN until the wait), and the gradients are not finite."""
    cfg = (8, 2, 4, True, 1, True, False, True)
    src = cuda_bwd.SOURCE.replace("    if (FULLV) stage_wait();\n#endif\n    __syncthreads();",
                                  "\n#endif\n    __syncthreads();")
    assert src != cuda_bwd.SOURCE
    monkeypatch.setattr(cuda_bwd, "SOURCE", src)
    cuda_bwd.source.cache_clear()
    try:
        t = _inputs(1, 8, 600, 16, torch.float32, seed=3, dev="cpu")
        _, _, gy, gT, _ = _grads(t, None, torch.float32)
        _, _, g = _bwd_pair(t, cfg, None, gy, gT)
        assert not all(torch.isfinite(x).all() for x in g if x is not None)
    finally:
        monkeypatch.undo()
        cuda_bwd.source.cache_clear()


@pytest.fixture
def emulated_dispatch(monkeypatch):
    """The public ``selective_scan`` on CPU tensors takes the path it takes on a GPU, its CUDA kernels running in the
    emulator: the kernel dispatch forced on (``EVALKIT_KERNELS=triton``), the Triton module's interpreter guard
    lifted and ``cuda.available`` true (until ``disable``)."""
    pytest.importorskip("triton")
    from evalkit.kernels.selective_scan import triton as ss_triton

    monkeypatch.setenv("EVALKIT_KERNELS", "triton")
    monkeypatch.setattr(ss_triton, "_INTERPRET", False)
    monkeypatch.setattr(ss_cuda, "_DISABLED", [])
    monkeypatch.setattr(ss_cuda, "available", lambda *a: not ss_cuda._DISABLED)


def _ran(before: dict) -> set:
    return {k for k, v in dispatch.variant_calls().items() if v > before.get(k, 0)}


def test_public_path_trains_through_the_cuda_pair(emulated_dispatch):
    """Through autograd on the native Mamba mixer's views (u, z halves of one tensor; B, C slices of another), the
    CUDA training forward stores its states and the CUDA backward reads them; the gradients are the reference's. And
    without D, z, bias, softplus and initial state their gradients are None."""
    out, out_r = mixer_views_grads(2, 24, 1500, 16, "cpu")
    assert _rel(out, out_r) < 1e-2
    bare = _inputs(1, 8, 700, 16, torch.float32, seed=21, full=False, dev="cpu")
    bare["delta"] = torch.nn.functional.softplus(bare["delta"])
    args = {k: v.clone().requires_grad_(True) for k, v in bare.items()}
    out = selective_scan(**args, delta_softplus=False)
    g = torch.autograd.grad(out.sum(), list(args.values()))
    ref = {k: v.clone().requires_grad_(True) for k, v in bare.items()}
    g_r = torch.autograd.grad(selective_scan_ref(**ref, delta_softplus=False).sum(), list(ref.values()))
    for name, a, r in zip(args, g, g_r):
        assert _rel(a, r) < 1e-4, name


def test_default_inference_layout_follows_the_width(emulated_dispatch):
    """Without grad, the default forward takes the state-split layout where its warps fill the (emulated, 132-SM)
    GPU — d_inner 4096, state 16: 512 warps — and the time-parallel one for a narrow layer; both say which ran."""
    for d, name in ((4096, "selective_scan:cuda-serial"), (64, "selective_scan:cuda")):
        t = _inputs(1, d, 40, 16, torch.bfloat16, seed=d, dev="cpu")
        before = dispatch.variant_calls()
        with torch.no_grad():
            y = selective_scan(**t)
        assert _ran(before) == {name}
        assert _rel(y, _ref(t)[0]) < 1e-2


# AddressSanitizer: the default configs and the staging options, in 16-bit types (the narrowest accesses), aligned and
# not; a subprocess, since ASan's runtime must be loaded before anything else
_ASAN_SCRIPT = """
import torch
from evalkit.kernels.selective_scan import cuda as ss_cuda, cuda_bwd, cuda_serial
from tests.kernels.test_cuda_emulated import _bwd_pair, _grads, _inputs, _ref, _rel, _run
for dtype in (torch.bfloat16, torch.float16):
    for L in (600, 601):
        t = _inputs(2, 11, L, 16, dtype, seed=L, dev="cpu")
        y_ref = _ref(t)[0]
        assert _rel(_run(t, cuda_serial.CONFIG)[0], y_ref) < 1e-2
        assert _rel(ss_cuda.selective_scan_fwd_cuda(**t, config=ss_cuda.CONFIG)[0], y_ref) < 1e-2
        f, _, gy, gT, gr = _grads(t, None, dtype)
        for cfg in (cuda_bwd.BWD_CONFIG, (8, 2, 4, True, 3, True, False, True), (4, 4, 2, True, 1, True, True),
                    (8, 2, 4, True, 1, True, True, True, True)):
            for a, r in zip(_bwd_pair(t, cfg, None, gy, gT)[2], gr):
                assert _rel(a, r) < 3e-2, cfg
print("in bounds")
"""


def _asan_env():
    lib = subprocess.run([cuda_emu.compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout
    if not os.path.isabs(lib.strip()) or not os.path.exists(lib.strip()):
        pytest.skip("the C++ compiler has no AddressSanitizer runtime")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "EVALKIT_CUDA_EMU_ASAN": "1", "LD_PRELOAD": lib.strip(), "ASAN_OPTIONS": "detect_leaks=0",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:  # e.g. a sandbox where ASan cannot map its shadow memory
        pytest.skip(f"AddressSanitizer does not start here: {probe.stderr.strip()[-300:]}")
    return env, root


def test_kernels_stay_in_bounds_under_asan():
    """Every access of the kernels to the tensors (global memory) is in bounds, and a read one element past a tensor
    is reported: the emulated kernels compiled with AddressSanitizer."""
    env, root = _asan_env()
    res = subprocess.run([sys.executable, "-c", _ASAN_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0 and "in bounds" in res.stdout, res.stderr[-4000:]
    oob = ("from tests.kernels.test_cuda_emulated import _kernel, _launch\n"
           "_launch(_kernel('    g.out[t] = g.inp[t + 1];'))\n")
    res = subprocess.run([sys.executable, "-c", oob], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "heap-buffer-overflow" in res.stderr, res.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------
# the emulator's own checks, on small kernels


class _Args(ctypes.Structure):
    _fields_ = [("out", ctypes.c_void_p), ("inp", ctypes.c_void_p)]


def _kernel(body: str):
    src = r"""
struct Args { float* out; const float* inp; };
extern "C" __global__ void k(const Args g) {
    extern __shared__ __align__(16) float smem[];
    const int t = threadIdx.x, lane = t & 31;
""" + body + "\n}\n"
    return cuda_emu.function(src, "k")


def _launch(f, block=64, shared=256, n=64):
    out, inp = torch.zeros(n), torch.arange(n, dtype=torch.float32)
    f((2, 1, 1), block, _Args(out.data_ptr(), inp.data_ptr()), shared=shared)
    return out


def test_emulator_shuffles_barriers_and_shared_memory():
    f = _kernel("""
    float v = g.inp[t];
    for (int off = 1; off < 32; off <<= 1) {
        const float o = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += o;
    }
    smem[t] = v;
    __syncthreads();
    const float bx = __shfl_xor_sync(0xffffffffu, (float)blockIdx.x, 1);
    g.out[t] = smem[63 - t] + bx + __shfl_sync(0xffffffffu, v, 0, 16);""")
    out = _launch(f)
    x = torch.arange(64, dtype=torch.float32)
    scan = torch.cat([x[:32].cumsum(0), x[32:].cumsum(0)])
    first16 = scan[torch.arange(64) // 16 * 16]
    assert torch.equal(out, scan.flip(0) + 1.0 + first16)  # block 1 wrote last


def test_emulator_schedules(monkeypatch):
    """Warp 1 writes shared memory that warp 0 reads with no barrier between: in round robin warp 0's last lane reads
    before warp 1 has written (NaN) and the others after; greedy first-warp-first runs warp 0 to its end first (all
    NaN), greedy last-warp-first warp 1 (warp 0 reads the data)."""
    f = _kernel("""
    if (t >= 32) smem[t - 32] = 7.f;
    __syncwarp();
    if (t < 32) g.out[t] = smem[t];""")
    expect = {"0": torch.tensor([7.0] * 31 + [float("nan")]), "2": torch.full((32,), float("nan")),
              "3": torch.full((32,), 7.0)}
    for order, want in expect.items():
        monkeypatch.setenv("EVALKIT_CUDA_EMU_ORDER", order)
        assert torch.equal(_launch(f)[:32].nan_to_num(-1.0), want.nan_to_num(-1.0)), order


def test_emulator_reports_a_deadlock():
    f = _kernel("    if (lane < 16) __syncthreads(); else __syncwarp(); g.out[t] = 1.f;")
    with pytest.raises(cuda_emu.EmulatorError, match="deadlock"):
        _launch(f)


def test_emulator_reports_a_shuffle_from_an_exited_lane():
    f = _kernel("    if (lane == 5) return; g.out[t] = __shfl_sync(0xffffffffu, 1.f, 5);")
    with pytest.raises(cuda_emu.EmulatorError, match="names lanes of this warp that have exited"):
        _launch(f)


def test_emulator_defers_cp_async_and_poisons_shared_memory():
    """A read before cp.async's wait sees NaN, after it the data; shared memory nothing wrote is NaN; a write
    past its end and a misaligned copy are errors."""
    early = _kernel("""
    cp_async16(shared_addr(smem + 4 * (t & 15)), g.inp + 4 * (t & 15));
    cp_commit();
    g.out[t] = smem[4 * (t & 15)];""")
    assert torch.isnan(_launch(early)).all()
    waited = _kernel("""
    cp_async16(shared_addr(smem + 4 * (t & 15)), g.inp + 4 * (t & 15));
    cp_wait_all();
    g.out[t] = smem[4 * (t & 15)];""")
    assert torch.equal(_launch(waited), 4 * (torch.arange(64) % 16).float())
    assert torch.isnan(_launch(_kernel("    g.out[t] = smem[t];"))).all()  # nothing wrote it
    ok = _kernel("""
    if (t < 16) cp_async16(shared_addr(smem + 4 * t), g.inp + 4 * t);
    cp_wait_all();
    __syncthreads();
    g.out[t] = smem[63 - t];""")
    assert torch.equal(_launch(ok), torch.arange(64, dtype=torch.float32).flip(0))
    with pytest.raises(cuda_emu.EmulatorError, match="past the end"):
        _launch(_kernel("    smem[64 + t] = 0.f;"))
    with pytest.raises(cuda_emu.EmulatorError, match="misaligned"):
        _launch(_kernel("    cp_async16(shared_addr(smem + 1), g.inp);"))


def test_emulator_compile_error_names_the_kernel():
    with pytest.raises(cuda_emu.EmulatorCompileError, match="could not compile k"):
        cuda_emu.function('extern "C" __global__ void k(const int g) { undefined_call(); }', "k")
