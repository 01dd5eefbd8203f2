"""The CUDA C++ selective-scan forward (evalkit/kernels/selective_scan/cuda.py, compiled by NVRTC) and backward
(cuda_bwd.py) against selective_scan_ref. The numerical tests here need a GPU and run the full grid there (the
H200, kernels/results-h200-v*.md); without one, only the dispatch rules and the source generation are checked here,
and test_cuda_emulated.py runs the same kernels at small sizes on the CPU under evalkit's CUDA emulator."""

from __future__ import annotations

import pytest
import torch

from evalkit.kernels import dispatch
from evalkit.kernels.selective_scan import cuda as ss_cuda
from evalkit.kernels.selective_scan import cuda_bwd
from evalkit.kernels.selective_scan import selective_scan, selective_scan_ref
from tests.kernels.scan_cases import inputs as _inputs, mixer_views_grads, ref as _ref, rel as _rel

ON_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU (test_cuda_emulated.py runs the kernel on the CPU)")
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
# (batch, channels, L, state): ragged and 16-byte-aligned lengths, N up to 32, channels not a
# multiple of ROWS · WARPS
CASES = [(1, 8, 63, 16), (2, 5, 500, 8), (1, 4, 1000, 16), (2, 3, 37, 4), (2, 130, 4096, 16), (1, 7, 2048, 32)]
CONFIGS = [ss_cuda.CONFIG, (8, 1, 1, 1, False, False, False), (16, 2, 4, 2, False, True, False),
           (8, 2, 2, 1, True, True, True), (16, 1, 1, 1, False, False, True), (8, 3, 2, 1, True, False, True)]


def test_not_available_off_gpu_or_out_of_range(monkeypatch):
    """CPU tensors, N > 32, strided L, mixed u / delta dtypes or the switch: the Triton kernels run."""
    t = _inputs(1, 4, 40, 4, torch.float32, seed=1, dev="cpu")
    assert not ss_cuda.available(t["u"], t["delta"], t["A"], t["B"], t["C"], t["z"])
    if ON_GPU:
        g = _inputs(1, 4, 40, 4, torch.float32, seed=1)
        assert ss_cuda.available(g["u"], g["delta"], g["A"], g["B"], g["C"], g["z"])
        wide = torch.zeros(4, 33, device="cuda")
        assert not ss_cuda.available(g["u"], g["delta"], wide, g["B"], g["C"], g["z"])
        strided = g["delta"].transpose(1, 2).contiguous().transpose(1, 2)
        assert not ss_cuda.available(g["u"], strided, g["A"], g["B"], g["C"], g["z"])
        assert not ss_cuda.available(g["u"], g["delta"].half(), g["A"], g["B"], g["C"], g["z"])
        monkeypatch.setenv("EVALKIT_SCAN_CUDA", "0")
        assert not ss_cuda.available(g["u"], g["delta"], g["A"], g["B"], g["C"], g["z"])


def test_source_specialises_by_defines():
    src = ss_cuda.source(torch.bfloat16, torch.float32, 16, 2, 4, 1, True, False, has_d=True, has_z=False,
                         has_bias=True, softplus=True, has_h0=False, vec=False)
    head = src.split("typedef", 1)[0]
    for line in ("#define TU bf16_t", "#define TBC float", "#define K 16", "#define ROWS 2", "#define WARPS 4",
                 "#define HAS_Z 0", "#define VEC 0", "#define TWO_PASS 1",
                 "#define PREFETCH 0"):
        assert line in head
    assert "evalkit_selective_scan_fwd" in src


def test_cuda_variant_is_inference_only():
    from evalkit.kernels.selective_scan import triton as ss_triton

    t = _inputs(1, 4, 40, 4, torch.float32, seed=1, dev="cpu")
    with pytest.raises(ValueError, match="inference"):
        ss_triton.selective_scan_fwd(**t, variant="cuda", store_states=True)


@gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-D{}-L{}-N{}".format(*c))
def test_forward_matches_reference(case, dtype, cfg):
    b, d, L, n = case
    t = _inputs(b, d, L, n, dtype, seed=L + d)
    h0 = torch.randn(b, d, n, device="cuda")
    y_ref, h_ref = _ref(t, initial_state=h0)
    y, hT = ss_cuda.selective_scan_fwd_cuda(**t, initial_state=h0, config=cfg)
    assert y.dtype == dtype and hT.dtype == torch.float32
    assert _rel(y, y_ref) < TOL[dtype] and _rel(hT, h_ref) < 1e-4
    bare = _inputs(b, d, L, n, dtype, seed=L + d, full=False)
    bare["delta"] = torch.nn.functional.softplus(bare["delta"].float()).to(dtype)  # taken as given: > 0
    y_ref, h_ref = _ref(bare, delta_softplus=False)
    y, hT = ss_cuda.selective_scan_fwd_cuda(**bare, delta_softplus=False, config=cfg)
    assert _rel(y, y_ref) < TOL[dtype] and _rel(hT, h_ref) < 1e-4


@gpu
def test_mixer_views_and_mixed_dtypes():
    """z a half of the in-projection's output and B, C slices of x_proj's (the native Mamba mixer's
    layout), and float32 u with bfloat16 B, C."""
    b, d, L, n = 2, 64, 1024, 16
    t = _inputs(b, d, L, n, torch.bfloat16, seed=3)
    xz = torch.randn(b, 2 * d, L, device="cuda", dtype=torch.bfloat16)
    t["u"], t["z"] = xz.chunk(2, dim=1)
    dbc = torch.randn(b, 8 + 2 * n, L, device="cuda", dtype=torch.bfloat16)
    _, t["B"], t["C"] = dbc.split([8, n, n], dim=1)
    y_ref, h_ref = _ref(t)
    for cfg in CONFIGS:
        y, hT = ss_cuda.selective_scan_fwd_cuda(**t, config=cfg)
        assert _rel(y, y_ref) < 1e-2 and _rel(hT, h_ref) < 1e-4, cfg
    m = _inputs(2, 33, 777, 16, torch.float32, seed=4)
    m["B"], m["C"] = m["B"].bfloat16(), m["C"].bfloat16()
    y_ref, h_ref = _ref(m)
    y, hT = ss_cuda.selective_scan_fwd_cuda(**m)
    assert _rel(y, y_ref) < 2e-5 and _rel(hT, h_ref) < 1e-4


@gpu
def test_default_dispatch_and_graph_replay():
    """selective_scan (no grad, L-contiguous) runs this kernel and says so; a captured CUDA graph
    replays it on new inputs."""
    t = _inputs(1, 64, 2048, 16, torch.bfloat16, seed=7)
    before = dispatch.variant_calls().get("selective_scan:cuda", 0)
    with torch.no_grad():
        y = selective_scan(**t)
    assert dispatch.variant_calls().get("selective_scan:cuda", 0) == before + 1
    assert _rel(y, _ref(t)[0]) < 1e-2
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ss_cuda.selective_scan_fwd_cuda(**t)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_g, h_g = ss_cuda.selective_scan_fwd_cuda(**t)
    new = _inputs(1, 64, 2048, 16, torch.bfloat16, seed=8)
    for k in t:
        t[k].copy_(new[k])
    g.replay()
    torch.cuda.synchronize()
    y_ref, h_ref = _ref(new)
    assert _rel(y_g, y_ref) < 1e-2 and _rel(h_g, h_ref) < 1e-4


@pytest.fixture
def forced_cuda(monkeypatch):
    """The CUDA path as if available (on CPU too: the dispatch's interpreter guard lifted, ``available``
    true until ``disable``), with a fresh switch-off list; yields the Triton module that dispatches."""
    pytest.importorskip("triton")
    from evalkit.kernels.selective_scan import triton as ss_triton  # (conftest: the interpreter without a GPU)

    monkeypatch.setattr(ss_triton, "_INTERPRET", False)
    monkeypatch.setattr(ss_cuda, "_DISABLED", [])
    monkeypatch.setattr(ss_cuda, "available", lambda *a: not ss_cuda._DISABLED)
    return ss_triton


def test_compile_failure_falls_back_to_triton_once(monkeypatch, forced_cuda):
    """When NVRTC or the driver refuses the module, the automatically chosen CUDA forward warns once,
    switches itself off and time2 runs (on CPU: under the interpreter, with the dispatch's interpreter
    guard lifted and ``available`` forced); asked for by name, the error stands."""
    ss_triton = forced_cuda
    calls = []

    def refuse(*a, **k):
        calls.append(1)
        raise ss_cuda.CompileError("NVRTC compile failed: test")

    monkeypatch.setattr(ss_cuda, "selective_scan_fwd_cuda", refuse)
    t = _inputs(1, 4, 40, 4, torch.float32, seed=2, dev="cuda" if ON_GPU else "cpu")
    y_ref, h_ref = _ref(t)
    with pytest.warns(RuntimeWarning, match="the Triton kernels run instead"):
        y, hT, _ = ss_triton.selective_scan_fwd(**t)
    assert _rel(y, y_ref) < 1e-5 and _rel(hT, h_ref) < 1e-5
    y, hT, _ = ss_triton.selective_scan_fwd(**t)  # switched off: no second try
    assert calls == [1] and ss_cuda._DISABLED
    with pytest.raises(ss_cuda.CompileError):
        ss_triton.selective_scan_fwd(**t, variant="cuda")


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", [(1, 8, 63, 16), (2, 5, 1000, 8), (1, 64, 4096, 16), (2, 3, 777, 4)],
                         ids=lambda c: "B{}-D{}-L{}-N{}".format(*c))
def test_training_forward_stores_time2s_states(case, dtype, monkeypatch):
    """The CUDA training forward stores what time2 stores (the state entering every TB steps, the
    pre-gate y), and through autograd (CUDA forward, Triton time backward: ``EVALKIT_SCAN_CUDA_BWD=0``)
    the gradients are the reference's."""
    from evalkit.kernels.selective_scan import triton as ss_triton
    from evalkit.kernels.selective_scan.triton_bwd import TIME_BWD_CONFIG

    monkeypatch.setenv("EVALKIT_SCAN_CUDA_BWD", "0")

    b, d, L, n = case
    TB = TIME_BWD_CONFIG[0]
    t = _inputs(b, d, L, n, dtype, seed=L + 5)
    h0 = torch.randn(b, d, n, device="cuda")
    yp = torch.empty_like(t["u"])
    y, hT, st = ss_cuda.selective_scan_fwd_cuda_train(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                                      t["delta_bias"], True, h0, TB, yp)
    yp2 = torch.empty_like(t["u"])
    y2, hT2, st2 = ss_triton.selective_scan_fwd(**t, initial_state=h0, variant="time2", chunk=TB, block_d=4,
                                                num_warps=1, store_states=True, ypre=yp2)
    assert st.shape == st2.shape
    assert _rel(st, st2) < 1e-5 and _rel(hT, hT2) < 1e-5
    assert _rel(y, y2) < TOL[dtype] and _rel(yp, yp2) < TOL[dtype]
    args = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    before = dispatch.variant_calls()
    out = selective_scan(**args, initial_state=h0)
    grads = torch.autograd.grad((out.float() * out.detach().float()).sum(), list(args.values()))
    ran = {k for k, v in dispatch.variant_calls().items() if v > before.get(k, 0)}
    assert ran == {"selective_scan:cuda", "selective_scan_bwd:time2"}
    ref = {k: v.detach().float().requires_grad_(True) for k, v in t.items()}
    out_r = selective_scan_ref(**ref, initial_state=h0)
    g_r = torch.autograd.grad((out_r * out.detach().float()).sum(), list(ref.values()))
    for name, a, r in zip(args, grads, g_r):
        assert _rel(a, r) < (1e-4 if dtype == torch.float32 else 3e-2), name


# ---------------------------------------------------------------------------------------------------
# the CUDA backward (cuda_bwd.py): the CUDA training forward storing every 32·K steps, then the backward

# the default, other shapes, and the options (cuda_bwd._full): a register cap, one barrier per state or two, the
# transposed scans (groups of 16 / 8 / 4 lanes at ROWS 1 / 2 / 4), B / C staged in shared memory, the inputs
# prefetched a block ahead (SIN; without effect at K 4 in 16-bit types)
BWD_CONFIGS = list(dict.fromkeys([cuda_bwd.BWD_CONFIG, (16, 1, 4), (16, 1, 8, True), (8, 1, 2), (16, 2, 2),
                                  (8, 2, 4, False), (8, 2, 4, True, 3), (8, 2, 4, True, 1, True),
                                  (8, 2, 4, False, 1, True), (16, 1, 4, False, 1, True), (8, 2, 4, True),
                                  (8, 2, 4, True, 1, True, True), (8, 2, 4, False, 1, False, True),
                                  (16, 1, 4, True, 1, True, True), (4, 4, 2, True, 1, True, True),
                                  (8, 1, 2, False, 1, False, True), (8, 2, 4, True, 1, True, False, True),
                                  (8, 2, 4, True, 1, True, True, True), (8, 2, 4, False, 1, False, False, True),
                                  (16, 1, 4, True, 1, True, True, True), (4, 4, 2, True, 1, False, False, True),
                                  (8, 2, 4, True, 1, True, True, True, True),
                                  (8, 2, 4, True, 1, True, False, True, True),
                                  (8, 2, 4, True, 1, True, False, False, True),
                                  (4, 4, 2, True, 1, True, True, True, True),
                                  (16, 1, 4, False, 1, False, False, False, True),
                                  (8, 2, 4, True, 3, True, False, True)]))


def _cfg_id(c: tuple) -> str:
    K, R, W, v4, minb, pairbar, tscan, sbc, sin = cuda_bwd._full(c)
    return (f"K{K}-R{R}-W{W}" + ("-v4" if v4 else "") + (f"-minb{minb}" if minb > 1 else "")
            + ("-pairbar" if pairbar else "") + ("-tscan" if tscan else "") + ("-sbc" if sbc else "")
            + ("-sin" if sin else ""))


def _bwd_pair(t, cfg, h0, gy, gT, softplus=True):
    z = t.get("z")
    yp = torch.empty_like(t["u"], memory_format=torch.contiguous_format) if z is not None else None
    y, hT, st = ss_cuda.selective_scan_fwd_cuda_train(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"), z,
                                                      t.get("delta_bias"), softplus, h0, cuda_bwd.store_tb(cfg), yp)
    g = cuda_bwd.selective_scan_bwd_cuda(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"), z,
                                         t.get("delta_bias"), h0, st, yp, gy, gT, delta_softplus=softplus,
                                         config=cfg)
    return y, hT, g


@gpu
@pytest.mark.parametrize("cfg", BWD_CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-D{}-L{}-N{}".format(*c))
def test_cuda_backward_matches_reference(case, dtype, cfg):
    """Every input's gradient (and the initial state's) against the reference's autograd, with the
    final state's gradient given: odd and aligned lengths, N 4-32, channels not a multiple of a block."""
    b, d, L, n = case
    t = _inputs(b, d, L, n, dtype, seed=L + n)
    h0 = torch.randn(b, d, n, device="cuda")
    f = {k: v.float().requires_grad_(True) for k, v in {**t, "initial_state": h0}.items()}
    yr, hr = selective_scan_ref(**f, return_final_state=True)
    gy = torch.randn_like(yr).to(dtype)
    gT = torch.randn_like(hr)
    gr = torch.autograd.grad((yr * gy.float()).sum() + (hr * gT).sum(), list(f.values()))
    y, hT, g = _bwd_pair(t, cfg, h0, gy, gT)
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    assert _rel(hT, hr) < 1e-4
    ins = {**t, "initial_state": h0}
    for name, a, r in zip(f, g, gr):
        assert a.dtype == ins[name].dtype, name
        assert _rel(a, r) < tol, name


@gpu
@pytest.mark.parametrize("cfg", BWD_CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("n", [1, 5, 3, 6])
def test_cuda_backward_odd_state_counts(cfg, n):
    """The state loop runs in pairs (the second state's B / C prefetched during the first; with PAIRBAR one
    barrier per pair): an odd N leaves a last pair of one; N 6 ends on a full pair."""
    t = _inputs(2, 11, 777, n, torch.float32, seed=40 + n)
    f = {k: v.float().requires_grad_(True) for k, v in t.items()}
    yr, hr = selective_scan_ref(**f, return_final_state=True)
    gy, gT = torch.randn_like(yr), torch.randn_like(hr)
    gr = torch.autograd.grad((yr * gy).sum() + (hr * gT).sum(), list(f.values()))
    _, _, g = _bwd_pair(t, cfg, None, gy, gT)
    for name, a, r in zip(f, g, gr):
        assert _rel(a, r) < 1e-4, name


@gpu
@pytest.mark.parametrize("cfg", list(dict.fromkeys([cuda_bwd.BWD_CONFIG] + [c for c in BWD_CONFIGS
                                                                              if any(cuda_bwd._full(c)[7:])])),
                         ids=_cfg_id)
def test_cuda_backward_unaligned_bc_every_option(cfg):
    """B and C as views 2 bytes off 16-byte alignment (row stride L + 1) for each config with the staging options: no
    block takes the 16-byte paths, so SBC stages B / C element by element and SIN stays off; the gradients still
    match the reference (``test_cuda_backward_unaligned_rows`` covers the default through the public path)."""
    b, d, L, n = 2, 19, 1500, 16
    t = _inputs(b, d, L, n, torch.bfloat16, seed=77)
    for k in ("B", "C"):
        big = torch.zeros(b, n, L + 1, device="cuda", dtype=torch.bfloat16)
        big[..., 1:] = t[k]
        t[k] = big[..., 1:]
    assert not ss_cuda._vec_ok(2, t["B"], t["C"])
    f = {k: v.float().requires_grad_(True) for k, v in t.items()}
    yr, hr = selective_scan_ref(**f, return_final_state=True)
    gy = torch.randn_like(yr).to(torch.bfloat16)
    gT = torch.randn_like(hr)
    gr = torch.autograd.grad((yr * gy.float()).sum() + (hr * gT).sum(), list(f.values()))
    _, _, g = _bwd_pair(t, cfg, None, gy, gT)
    for name, a, r in zip(f, g, gr):
        assert _rel(a, r) < 3e-2, name


@gpu
def test_cuda_backward_bare_and_views():
    """Without D, z, bias, softplus and initial state (their gradients None); and on the mixer's
    views (u, z halves of one tensor, B, C slices of another), through the public autograd path,
    which says that the CUDA backward ran."""
    t = _inputs(2, 40, 1500, 16, torch.bfloat16, seed=21, full=False)
    t["delta"] = torch.nn.functional.softplus(t["delta"].float()).to(torch.bfloat16)
    f = {k: v.float().requires_grad_(True) for k, v in t.items()}
    yr = selective_scan_ref(**f, delta_softplus=False)
    gy = torch.randn_like(yr).to(torch.bfloat16)
    gr = torch.autograd.grad((yr * gy.float()).sum(), list(f.values()))
    _, _, g = _bwd_pair(t, cuda_bwd.BWD_CONFIG, None, gy, None, softplus=False)
    for a, r in zip(g[:5], gr):
        assert _rel(a, r) < 3e-2
    assert all(x is None for x in g[5:])
    mixer_views_grads(2, 64, 3000, 16, "cuda")


@gpu
@pytest.mark.parametrize("which", ["delta", "C"])
def test_cuda_backward_unaligned_rows(which):
    """delta or C misaligned for 16-byte accesses (a view one element into a row) while u and B are
    aligned: both kernels take their element-wise path, and the gradients are the reference's; an
    output gradient with stride 0 (from ``sum()``) is made contiguous."""
    b, d, L, n = 2, 24, 1024, 16
    t = _inputs(b, d, L, n, torch.bfloat16, seed=24)
    shape = t[which].shape
    wide = torch.zeros(*shape[:-1], L + 1, device="cuda", dtype=torch.bfloat16)
    wide[..., 1:] = t[which]
    t[which] = wide[..., 1:]
    assert t[which].data_ptr() % 16 != 0
    args = {k: (v if k == which else v.clone()).requires_grad_(True) for k, v in t.items()}
    assert args[which].data_ptr() == t[which].data_ptr()
    out = selective_scan(**args)
    grads = torch.autograd.grad(out.float().sum(), list(args.values()))
    ref = {k: v.detach().float().requires_grad_(True) for k, v in t.items()}
    g_r = torch.autograd.grad(selective_scan_ref(**ref).sum(), list(ref.values()))
    for name, a, r in zip(args, grads, g_r):
        assert _rel(a, r) < 3e-2, name


@gpu
def test_cuda_backward_states_must_match_its_block():
    t = _inputs(1, 8, 600, 16, torch.float32, seed=23)
    yp = torch.empty_like(t["u"])
    _, _, st = ss_cuda.selective_scan_fwd_cuda_train(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                                     t["delta_bias"], True, None, 128, yp)
    with pytest.raises(ValueError, match="state entering every"):
        cuda_bwd.selective_scan_bwd_cuda(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                         None, st, yp, None, None, config=(16, 1, 4))


def test_backward_compile_failure_falls_back_to_the_triton_pair(monkeypatch, forced_cuda):
    """When NVRTC or the driver refuses the backward's module, the training forward finds out before it
    stores anything, warns once, switches the CUDA kernels off and runs the Triton pair (time2 storing
    states, the Triton time backward); on CPU under the interpreter, with ``available`` forced."""
    ss_triton = forced_cuda

    def refuse(*a, **k):
        raise ss_cuda.CompileError("NVRTC compile failed: test")

    monkeypatch.setattr(cuda_bwd, "prepare", refuse)
    t = _inputs(1, 4, 40, 4, torch.float32, seed=3, dev="cuda" if ON_GPU else "cpu")
    args = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    before = dispatch.variant_calls()
    with pytest.warns(RuntimeWarning, match="the Triton kernels run instead"):
        out = ss_triton.selective_scan(**args)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), list(args.values()))
    ran = {k for k, v in dispatch.variant_calls().items() if v > before.get(k, 0)}
    assert ran == {"selective_scan:time2", "selective_scan_bwd:time2"} and ss_cuda._DISABLED
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    g_r = torch.autograd.grad((selective_scan_ref(**ref) * w).sum(), list(ref.values()))
    for name, a, r in zip(args, grads, g_r):
        assert _rel(a, r) < 1e-4, name


def test_cuda_backward_source_and_switch(monkeypatch):
    """On any machine: the backward's source carries its specialisation, blocks match the stored
    states (32·K steps, which the CUDA forward can store), and ``EVALKIT_SCAN_CUDA_BWD=0`` turns it off."""
    src = cuda_bwd.source(torch.bfloat16, torch.float32, 16, 1, 4, has_d=True, has_z=False, has_bias=True,
                          softplus=True, vec=False)
    assert "#define K 16\n" in src and "#define HAS_Z 0\n" in src and "#define TBC float\n" in src
    assert "evalkit_selective_scan_bwd" in src
    flags = dict(has_d=True, has_z=True, has_bias=True, softplus=True)
    for K, on in ((4, 0), (8, 1)):  # SIN only where a lane's K steps are whole 16-byte chunks (8 bytes at K 4, bf16)
        src = cuda_bwd.source(torch.bfloat16, torch.bfloat16, K, 2, 2, True, 1, True, True, True, True, **flags)
        assert f"#define SIN {on}\n" in src and "#define TSCAN 1\n" in src and "#define SBC 1\n" in src
    assert cuda_bwd._full((8, 2, 4)) == (8, 2, 4, False, 1, False, False, False, False)
    for cfg in BWD_CONFIGS:
        assert cuda_bwd.store_tb(cfg) == 32 * cfg[0] and ss_cuda.supports_store(cuda_bwd.store_tb(cfg))
    assert cuda_bwd.enabled()
    monkeypatch.setenv("EVALKIT_SCAN_CUDA_BWD", "0")
    assert not cuda_bwd.enabled()


def _nvrtc_or_skip():
    try:
        ss_cuda._nvrtc()
    except OSError:
        pytest.skip("no NVRTC here (it ships with PyTorch's CUDA wheels; the CPU build has none)")


@pytest.mark.parametrize("arch", ["80", "86", "89", "90"])
def test_sources_compile_for_each_architecture(arch):
    """Where NVRTC is present (no GPU needed), the forward (inference and training) and the backward
    (both slot kinds, ragged and 16-byte paths, fp32 / bf16) compile for every architecture that
    ``available`` admits: the 16-byte atomics are sm_90's, and NVRTC refused them for sm_80-89."""
    _nvrtc_or_skip()
    flags = dict(has_d=True, has_z=True, has_bias=True, softplus=True)
    K, rows, warps, unroll, _, two_pass, prefetch = ss_cuda.CONFIG
    for dtype in (torch.float32, torch.bfloat16):
        for vec in (True, False):
            for store_tb in (0, cuda_bwd.store_tb()):
                ss_cuda.compile_source(ss_cuda.source(dtype, dtype, K, rows, warps, unroll, two_pass, prefetch,
                                                      has_h0=True, vec=vec, store_tb=store_tb, **flags), arch)
            for v4, pairbar, tscan, sbc, sin in ((True, False, False, False, False), (False, False, False, False, True),
                                                 (True, True, False, False, False), (False, True, False, True, False),
                                                 (True, True, True, True, True), (False, False, True, False, False)):
                ss_cuda.compile_source(cuda_bwd.source(dtype, dtype, *cuda_bwd.BWD_CONFIG[:3], v4, 1, pairbar, tscan,
                                                       sbc, sin,
                                                       vec=vec,
                                                       atom16=int(arch) >= 90,
                                                       **flags), arch)
