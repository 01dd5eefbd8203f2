"""The state-split CUDA C++ selective-scan forward (evalkit/kernels/selective_scan/cuda_serial.py,
kernels/NOTES.md v12) against selective_scan_ref and against the time-parallel CUDA forward's
training stores. The numerical tests here need a GPU; without one only the shape rules and the source generation
are checked here, and test_cuda_emulated.py runs the kernel at small sizes on the CPU under evalkit's CUDA
emulator."""

from __future__ import annotations

import pytest
import torch

from evalkit.kernels import dispatch
from evalkit.kernels.selective_scan import cuda as ss_cuda
from evalkit.kernels.selective_scan import cuda_serial
from tests.kernels.scan_cases import inputs as _inputs, ref as _ref, rel as _rel

ON_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU (test_cuda_emulated.py runs the kernel on the CPU)")
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
# (batch, channels, L, state): ragged and aligned lengths, shorter than one block, channels not a
# multiple of a warp's or a block's, N from 4 (one lane per channel) to 32 (eight)
CASES = [(1, 8, 63, 16), (2, 5, 500, 8), (1, 4, 1000, 16), (2, 3, 37, 4), (2, 130, 4096, 16), (1, 7, 2048, 32),
         (1, 3, 9, 16), (3, 40, 1040, 16)]
# (S, K, warps, software-pipelined, B / C 16-bit in shared memory)
CONFIGS = [cuda_serial.CONFIG, (4, 16, 1, True, False), (4, 16, 4, False, True), (2, 16, 2, True, True),
           (8, 16, 4, True, False), (4, 32, 2, True, True), (4, 8, 4, False, False), (1, 16, 4, True, True)]


def _run(t, cfg, softplus=True, h0=None, store_tb=0, ypre=None):
    return cuda_serial.launch(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"), t.get("z"),
                              t.get("delta_bias"), softplus, h0, cfg, store_tb, ypre)


def test_supports_and_shared_memory():
    assert cuda_serial.supports(16) and cuda_serial.supports(4) and cuda_serial.supports(32)
    assert not cuda_serial.supports(6) and not cuda_serial.supports(12)  # Q = 3 lanes per channel
    assert not cuda_serial.supports(256)  # 64 lanes per channel
    assert cuda_serial.supports(2, (2, 16, 4)) and not cuda_serial.supports(2, (4, 16, 4))
    assert not cuda_serial.supports(16, (1, 8, 4))  # 16 lanes per channel, 8 steps per block
    assert cuda_serial.pipe_ok(16, cuda_serial.CONFIG, 2) and not cuda_serial.pipe_ok(32, (2, 16), 2)
    assert cuda_serial.smem_bytes(16, (4, 16, 4, False)) <= 48 * 1024  # no opt-in needed
    assert cuda_serial.smem_bytes(32, (4, 16, 4, True), 4, 4) <= 227 * 1024  # the H100's most


def test_source_specialises_by_defines():
    src = cuda_serial.source(torch.bfloat16, torch.float32, 16, 4, 16, 4, True, True, has_d=True, has_z=False,
                             has_bias=True, softplus=True, has_h0=False, vec=False, store_tb=256)
    head = src.split("typedef", 1)[0]
    for line in ("#define TU bf16_t", "#define TBC float", "#define NN 16", "#define S 4", "#define K 16",
                 "#define WARPS 4", "#define PIPE 1", "#define BC16 0",  # (B, C fp32: no 16-bit copies)
                 "#define HAS_Z 0", "#define VEC 0", "#define STORE_TB 256"):
        assert line in head
    assert "evalkit_selective_scan_fwd_serial" in src


def _cfg_id(c: tuple) -> str:
    return "S{}-K{}-W{}".format(*c) + ("-pipe" if c[3] else "") + ("-bc16" if c[4] else "")


@gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-D{}-L{}-N{}".format(*c))
def test_forward_matches_reference(case, dtype, cfg):
    b, d, L, n = case
    if not cuda_serial.supports(n, cfg):
        pytest.skip(f"N {n} is not split by {cfg}")
    t = _inputs(b, d, L, n, dtype, seed=L + d)
    h0 = torch.randn(b, d, n, device="cuda")
    y_ref, h_ref = _ref(t, initial_state=h0)
    y, hT, _ = _run(t, cfg, h0=h0)
    assert y.dtype == dtype and hT.dtype == torch.float32
    assert _rel(y, y_ref) < TOL[dtype] and _rel(hT, h_ref) < 1e-4
    bare = _inputs(b, d, L, n, dtype, seed=L + d, full=False)
    bare["delta"] = torch.nn.functional.softplus(bare["delta"].float()).to(dtype)  # taken as given: > 0
    y_ref, h_ref = _ref(bare, delta_softplus=False)
    y, hT, _ = _run(bare, cfg, softplus=False)
    assert _rel(y, y_ref) < TOL[dtype] and _rel(hT, h_ref) < 1e-4


@gpu
def test_views_unaligned_rows_and_mixed_dtypes():
    """z a half of the in-projection's output, B and C slices of x_proj's (the native mixer's layout);
    rows that do not start 16-byte aligned (the element-wise path); float32 u with bfloat16 B, C."""
    b, d, L, n = 2, 64, 1024, 16
    t = _inputs(b, d, L, n, torch.bfloat16, seed=3)
    xz = torch.randn(b, 2 * d, L, device="cuda", dtype=torch.bfloat16)
    t["u"], t["z"] = xz.chunk(2, dim=1)
    dbc = torch.randn(b, 8 + 2 * n, L, device="cuda", dtype=torch.bfloat16)
    _, t["B"], t["C"] = dbc.split([8, n, n], dim=1)
    y_ref, h_ref = _ref(t)
    for cfg in CONFIGS:
        y, hT, _ = _run(t, cfg)
        assert _rel(y, y_ref) < 1e-2 and _rel(hT, h_ref) < 1e-4, cfg
    odd = dict(t)
    odd["delta"] = torch.randn(b, d, L + 1, device="cuda", dtype=torch.bfloat16)[..., 1:]  # 2-byte offset
    y_ref, h_ref = _ref(odd)
    y, hT, _ = _run(odd, cuda_serial.CONFIG)
    assert _rel(y, y_ref) < 1e-2 and _rel(hT, h_ref) < 1e-4
    m = _inputs(2, 33, 777, 16, torch.float32, seed=4)
    m["B"], m["C"] = m["B"].bfloat16(), m["C"].bfloat16()
    y_ref, h_ref = _ref(m)
    y, hT, _ = _run(m, cuda_serial.CONFIG)
    assert _rel(y, y_ref) < 2e-5 and _rel(hT, h_ref) < 1e-4


@gpu
@pytest.mark.parametrize("store_tb", [128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", [(1, 8, 63, 16), (2, 5, 1000, 8), (1, 64, 4096, 16), (2, 3, 777, 4)],
                         ids=lambda c: "B{}-D{}-L{}-N{}".format(*c))
def test_training_stores_match_the_time_parallel_kernel(case, dtype, store_tb):
    """With ``store_tb`` it stores what ``cuda.selective_scan_fwd_cuda_train`` stores: the state
    entering every ``store_tb`` steps and the pre-gate y."""
    b, d, L, n = case
    t = _inputs(b, d, L, n, dtype, seed=L + 5)
    h0 = torch.randn(b, d, n, device="cuda")
    yp, yp2 = torch.empty_like(t["u"]), torch.empty_like(t["u"])
    y, hT, st = _run(t, cuda_serial.CONFIG, h0=h0, store_tb=store_tb, ypre=yp)
    y2, hT2, st2 = ss_cuda._launch(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                   True, h0, ss_cuda.CONFIG, store_tb, yp2)  # (the explicit config: time-parallel)
    assert st.shape == st2.shape
    assert _rel(st, st2) < 1e-5 and _rel(hT, hT2) < 1e-5
    assert _rel(y, y2) < TOL[dtype] and _rel(yp, yp2) < TOL[dtype]


@gpu
def test_graph_replay():
    t = _inputs(1, 64, 2048, 16, torch.bfloat16, seed=7)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        _run(t, cuda_serial.CONFIG)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_g, h_g, _ = _run(t, cuda_serial.CONFIG)
    new = _inputs(1, 64, 2048, 16, torch.bfloat16, seed=8)
    for k in t:
        t[k].copy_(new[k])
    g.replay()
    torch.cuda.synchronize()
    y_ref, h_ref = _ref(new)
    assert _rel(y_g, y_ref) < 1e-2 and _rel(h_g, h_ref) < 1e-4


@pytest.mark.parametrize("arch", ["80", "86", "89", "90"])
def test_sources_compile_for_each_architecture(arch):
    """Where NVRTC is present (no GPU needed): every dtype, both paths and the training stores."""
    try:
        ss_cuda._nvrtc()
    except OSError:
        pytest.skip("no NVRTC here (it ships with PyTorch's CUDA wheels; the CPU build has none)")
    flags = dict(has_d=True, has_z=True, has_bias=True, softplus=True, has_h0=True)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for vec in (True, False):
            for store_tb in (0, 256):
                ss_cuda.compile_source(cuda_serial.source(dtype, torch.bfloat16, 16, *cuda_serial.CONFIG, vec=vec,
                                                          store_tb=store_tb, **flags), arch)
    for n, cfg in ((4, (4, 16, 1, True, True)), (32, (4, 16, 4, True, True)), (16, (2, 16, 2, False, True)),
                   (16, (8, 16, 4, True, True)), (16, (4, 32, 2, True, False)), (16, (1, 16, 4, True, True))):
        cfg = (*cfg[:3], cfg[3] and cuda_serial.pipe_ok(n, cfg, 2), cfg[4])  # as ``launch`` decides
        for tbc in (torch.float32, torch.float16, torch.bfloat16):
            ss_cuda.compile_source(cuda_serial.source(torch.bfloat16, tbc, n, *cfg, **flags), arch)


def test_which_defaults_run_this_layout(monkeypatch):
    assert cuda_serial.use(16) and cuda_serial.use(16, 256) and cuda_serial.use(16, 128)
    assert not cuda_serial.use(6) and not cuda_serial.use(16, 8)  # 8-step chunks fall inside a block
    monkeypatch.setattr(cuda_serial, "SERIAL_TRAINING", False)
    assert cuda_serial.use(16) and not cuda_serial.use(16, 256)
    monkeypatch.setenv("EVALKIT_SCAN_SERIAL", "0")
    assert not cuda_serial.use(16)


def _ran(before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in dispatch.variant_calls().items() if v > before.get(k, 0)}


def test_the_default_records_that_this_layout_ran(monkeypatch):
    """The cost probe stores the "op:variant" names a measurement launched: where ``cuda``'s default
    forward (inference or training) hands the shape to this layout, it records ``selective_scan:cuda-serial``,
    not the time-parallel kernel's ``selective_scan:cuda`` (that one's GPU tests check its name)."""
    t = _inputs(1, 4, 40, 16, torch.float32, seed=1, dev="cpu")
    calls = []
    monkeypatch.setattr(cuda_serial, "use", lambda *a, **k: True)
    monkeypatch.setattr(cuda_serial, "launch", lambda *a: calls.append(a) or ("y", "final", "states"))
    before = dispatch.variant_calls()
    assert ss_cuda.selective_scan_fwd_cuda(**t) == ("y", "final")
    a = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None, 256)
    assert ss_cuda.selective_scan_fwd_cuda_train(*a, torch.empty_like(t["u"])) == ("y", "final", "states")
    assert _ran(before) == {"selective_scan:cuda-serial": 2}
    assert [c[10:12] for c in calls] == [(None, 0), (None, 256)]  # its own default config; the state interval


@gpu
def test_small_grids_keep_the_time_parallel_kernel():
    """Fewer warps than FILL per SM sub-partition: the default stays time-parallel."""
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    full = int(cuda_serial.FILL * 4 * sms * 32 / 4) + 32  # channels whose N 16 / S 4 walks fill the GPU
    assert cuda_serial.use(16, 0, full, dev) and not cuda_serial.use(16, 0, full // 4, dev)


@gpu
def test_default_forward_runs_this_layout_and_the_switch(monkeypatch):
    """``cuda``'s default forward (inference and training) is this kernel; EVALKIT_SCAN_SERIAL=0 brings
    back the time-parallel one; both agree with the reference."""
    sms = torch.cuda.get_device_properties(torch.device("cuda")).multi_processor_count
    t = _inputs(2, 16 * sms, 1000, 16, torch.bfloat16, seed=21)  # enough channels for the serial layout (FILL)
    y_ref, h_ref = _ref(t)
    before = dispatch.variant_calls()
    y, hT = ss_cuda.selective_scan_fwd_cuda(**t)
    assert _ran(before) == {"selective_scan:cuda-serial": 1}
    y_s, h_s, _ = _run(t, cuda_serial.CONFIG)
    assert torch.equal(y, y_s) and torch.equal(hT, h_s)
    a = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None, 256)
    yp, yp_s = torch.empty_like(t["u"]), torch.empty_like(t["u"])
    _, _, st = ss_cuda.selective_scan_fwd_cuda_train(*a, yp)
    _, _, st_s = _run(t, cuda_serial.CONFIG, store_tb=256, ypre=yp_s)
    assert torch.equal(st, st_s) and torch.equal(yp, yp_s)
    monkeypatch.setenv("EVALKIT_SCAN_SERIAL", "0")
    before = dispatch.variant_calls()
    y_p, h_p = ss_cuda.selective_scan_fwd_cuda(**t)
    assert _ran(before) == {"selective_scan:cuda": 1}
    y_c, h_c = ss_cuda.selective_scan_fwd_cuda(**t, config=ss_cuda.CONFIG)
    assert torch.equal(y_p, y_c) and torch.equal(h_p, h_c)
    for yy, hh in ((y, hT), (y_p, h_p)):
        assert _rel(yy, y_ref) < 1e-2 and _rel(hh, h_ref) < 1e-4
