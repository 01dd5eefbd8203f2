"""Gated delta rule (Gated DeltaNet) kernel benchmark: check, measure the ceilings, time. One GPU run.

    PYTHONPATH=. python kernels/bench_gdn.py [--quick] [--out DIR] [--skip-checks] [--sections ...] [--dims ...]

1. checks the Triton kernels (evalkit/kernels/gated_delta/) against the PyTorch reference on this
   GPU — forward (o, final state), the Triton backward (every input's gradient), the decode step —
   in fp32 and bf16 on fresh random inputs with odd lengths (GPU-NOTES.md: Triton 3.6 miscompiles
   some Hopper backward kernels, so the check runs on the device itself), and the native
   gated_deltanet model's logits with kernels vs references;
2. measures the ceilings: device-to-device copy bandwidth and bf16 matmul rate;
3. times at batch 1, 16 heads, K = V = 64 and 128, L = 4k / 16k / 64k, bf16: the forward and
   forward + backward vs the reference and the floor (max of bytes ÷ bandwidth and FLOPs ÷ matmul
   rate), flash-linear-attention's chunk_gated_delta_rule forward where it imports; the decode step;
   training tokens/s of the zoo's gated_deltanet and hybrid_gdn models, kernels vs references.

Times are medians of CUDA-event timings (triton.testing.do_bench; a few plain repeats for the slow
reference), warm-up excluded. Writes gdn.md / gdn.json under --out after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from evalkit.kernels.gated_delta import gated_delta_ref, gated_delta_step_ref
from evalkit.kernels.gated_delta import triton as gdn
from evalkit.kernels.gated_delta import triton_step as gdn_step

DEV = "cuda"
LINES: list[str] = []


def say(s: str = "") -> None:
    print(s, flush=True)
    LINES.append(s)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(b, L, h, n, p, dtype, seed, grad=False):
    """q, k L2-normalised (q scaled by n^-1/2) in ``dtype``; g ≤ 0 and β ∈ (0, 1) in fp32 (as the mixer)."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device=DEV)  # noqa: E731
    t = dict(q=(F.normalize(r(b, L, h, n), dim=-1) * n ** -0.5).to(dtype),
             k=F.normalize(r(b, L, h, n), dim=-1).to(dtype), v=r(b, L, h, p).to(dtype),
             g=-F.softplus(r(b, L, h) - 2.0), beta=torch.sigmoid(r(b, L, h)))
    if grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


# ------------------------------------------------------------------------------- checks
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def check_all() -> bool:
    ok = True
    say("## checks on this GPU (rel = ‖kernel − reference‖ / ‖reference‖, reference in fp32 on the same "
        "inputs; grads: worst of q, k, v, g, β, initial state through the Triton backward)")
    say("| op | shape | dtype | o | final state | grads (worst) | pass |")
    say("|---|---|---|---|---|---|---|")
    cases = [(2, 1000, 4, 64, 64, 64), (1, 4099, 16, 128, 128, 64), (2, 63, 3, 16, 32, 32),
             (1, 1000, 2, 20, 40, 32), (2, 77, 3, 5, 6, 64), (1, 2000, 4, 128, 64, 32), (1, 300, 2, 16, 16, 64)]
    for dtype in (torch.float32, torch.bfloat16):
        tol = TOL[dtype]
        for (b, L, h, n, p, C) in cases:
            t = inputs(b, L, h, n, p, dtype, seed=L + h + n, grad=True)
            h0 = torch.randn(b, h, p, n, device=DEV, requires_grad=True)
            args = {**t, "initial_state": h0}
            try:
                o, S = gdn.gated_delta_rule(**args, chunk_size=C, return_final_state=True)
                f = {k: v.detach().float().requires_grad_(True) for k, v in args.items()}
                o_r, S_r = gated_delta_ref(**f, chunk_size=C, return_final_state=True)
                wo, ws = torch.randn_like(o_r), torch.randn_like(S_r)
                gk = torch.autograd.grad((o.float() * wo).sum() + (S * ws).sum(), list(args.values()))
                gr = torch.autograd.grad((o_r * wo).sum() + (S_r * ws).sum(), list(f.values()))
            except Exception as e:  # noqa: BLE001  (a kernel that fails to compile or launch is a FAIL row)
                ok = False
                say(f"| gated_delta | B{b}-L{L}-H{h}-N{n}-P{p}-T{C} | {str(dtype)[6:]} | failed: "
                    f"{type(e).__name__}: {str(e)[:120]} | | | FAIL |")
                continue
            errs = {k: rel(a, r) for k, a, r in zip(args, gk, gr)}
            worst = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else float("inf"))
            eo, es, eg = rel(o, o_r), rel(S, S_r), errs[worst]
            good = eo < tol and es < tol and eg < 2 * tol
            ok &= good
            say(f"| gated_delta | B{b}-L{L}-H{h}-N{n}-P{p}-T{C} | {str(dtype)[6:]} | {eo:.1e} | {es:.1e} | "
                f"{eg:.1e} ({worst}) | {'ok' if good else 'FAIL'} |")
        for (b, h, n, p) in [(1, 16, 128, 128), (3, 5, 20, 6), (16, 16, 64, 64)]:
            gen = torch.Generator(device=DEV).manual_seed(b * h + n)
            r = lambda *s: torch.randn(*s, generator=gen, device=DEV)  # noqa: E731
            st = r(b, h, p, n)
            kw = dict(q=F.normalize(r(b, h, n), dim=-1).to(dtype), k=F.normalize(r(b, h, n), dim=-1).to(dtype),
                      v=r(b, h, p).to(dtype), g=-F.softplus(r(b, h)), beta=torch.sigmoid(r(b, h)))
            o, sn = gdn_step.gated_delta_step(**kw, state=st)
            o_r, s_r = gated_delta_step_ref(**{k: v.float() for k, v in kw.items()}, state=st)
            eo, es = rel(o, o_r), rel(sn, s_r)
            good = eo < 1e-5 and es < 1e-5
            ok &= good
            say(f"| gated_delta step | B{b}-H{h}-N{n}-P{p} | {str(dtype)[6:]} | {eo:.1e} | {es:.1e} | – | "
                f"{'ok' if good else 'FAIL'} |")
    say()
    return ok


def model_check() -> bool:
    """The native gated_deltanet / hybrid_gdn models on CUDA: kernels (the default) vs the reference."""
    from evalkit.kernels import dispatch
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.spec import load_model_spec

    ok = True
    say("## native models on CUDA: logits with kernels (default) vs EVALKIT_KERNELS=ref")
    say("| model | dtype | L | kernel calls | max abs diff | max abs logit |")
    say("|---|---|---|---|---|---|")
    for name in ("models/gated_deltanet.yaml", "models/hybrid_gdn.yaml"):
        spec = load_model_spec(name)
        model = NativeLM(NativeAdapter.config(spec), seed=spec.init_seed or 0).to(DEV).eval()
        for dtype in (torch.float32, torch.bfloat16):
            model = model.to(dtype)
            ids = torch.randint(0, model.cfg.vocab_size, (2, 1000), device=DEV)
            os.environ.pop("EVALKIT_KERNELS", None)
            before = dispatch.kernel_calls()
            with torch.no_grad():
                lk = model(ids).float()
            calls = dispatch.kernel_calls() - before
            os.environ["EVALKIT_KERNELS"] = "ref"
            with torch.no_grad():
                lr = model(ids).float()
            os.environ.pop("EVALKIT_KERNELS", None)
            diff = (lk - lr).abs().max().item()
            good = calls > 0 and diff < (1e-3 if dtype == torch.float32 else 0.1) * max(1.0, lr.abs().max().item())
            ok &= good
            say(f"| {spec.name} | {str(dtype)[6:]} | 1000 | {calls} | {diff:.2e} | {lr.abs().max().item():.2f} |"
                f"{'' if good else ' FAIL'}")
    say()
    return ok


# ------------------------------------------------------------------------------- ceilings
def ceilings() -> dict[str, float]:
    n = 1 << 28  # 512 MiB of bf16 each way
    src = torch.randn(n, device=DEV, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median") * 1e-3
    bw = 2 * n * 2 / t
    del src, dst
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median") * 1e-3
    return {"copy_Bps": bw, "bf16_flops": 2 * 8192 ** 3 / t}


# ------------------------------------------------------------------------------- timing
def ms(fn, rep=100) -> float:
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def ms_slow(fn, n=3) -> float | None:
    """Median of n timed calls after one warm-up call (for the reference: do_bench's five-call
    estimate alone would take too long at 64k). None where it runs out of memory."""
    try:
        fn()
        ts = []
        for _ in range(n):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            torch.cuda.synchronize()
            ts.append(e0.elapsed_time(e1))
        return sorted(ts)[len(ts) // 2]
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def fmt(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def floor_ms(ceil, L, h, n, p, C=64, backward=False) -> tuple[float, float, float]:
    """(floor, bytes term, FLOPs term) in ms. Forward bytes: q, k, v read and o written (bf16), g, β
    (fp32); FLOPs: the tensor-core products per chunk and head, causal ones halved —
    K Kᵀ, T·Kb, T·Vb, Q Kᵀ, Aqk·U (C² each over N or P) and W_k Sᵀ, Uᵀ Kd, Q Sᵀ (C·N·P each):
    L·H·(C·(3N + 2P) + 6NP). Forward + backward (estimate): 11 passes over (L, H, ·) bf16 tensors
    instead of 4, and 3x the FLOPs. The C-step forward substitution (not tensor-core work) is not counted."""
    per_tok = (2 * n + 2 * p) * 2 + 8
    byts = L * h * (per_tok if not backward else (per_tok * 11 / 4))
    flops = L * h * (C * (3 * n + 2 * p) + 6 * n * p) * (3 if backward else 1)
    f_b, f_f = byts / ceil["copy_Bps"] * 1e3, flops / ceil["bf16_flops"] * 1e3
    return max(f_b, f_f), f_b, f_f


def bench_variants(rows, dims) -> dict:
    """Forward configs at L = 16k (chunk, warps): the best runs the length sweep."""
    say("## forward configs, batch 1, 16 heads, L 16384, bf16")
    say("| K = V | chunk | warps | ms | rel. error vs default |")
    say("|---|---|---|---|---|")
    best = {}
    for d in dims:
        t = inputs(1, 16384, 16, d, d, torch.bfloat16, seed=d)
        base = gdn.gdn_fwd(**t, chunk_size=64)[0]
        best_ms = float("inf")
        for C, nw in ((64, 4), (64, 8), (32, 4), (32, 8)):
            try:
                err = rel(gdn.gdn_fwd(**t, chunk_size=C, num_warps=nw)[0], base)
                k = ms(lambda: gdn.gdn_fwd(**t, chunk_size=C, num_warps=nw))
            except Exception as e:  # noqa: BLE001  (a config that fails to compile is reported)
                say(f"| {d} | {C} | {nw} | failed: {type(e).__name__} | |")
                continue
            say(f"| {d} | {C} | {nw} | {fmt(k)} | {err:.1e} |")
            rows.append(dict(op="gdn_fwd_config", d=d, C=C, warps=nw, ms=k, rel=err))
            if err < 3e-2 and k < best_ms:
                best[d], best_ms = dict(chunk_size=C, num_warps=nw), k
        del t, base
    say()
    return best


def bench_forward(ceil, lengths, rows, fla, best, dims) -> None:
    say("## forward, batch 1, 16 heads, bf16 (kernel: default chunk 64; best: best config above)")
    say("| K = V | L | kernel ms | best ms | fla chunk_gated_delta_rule ms | reference ms | speed-up vs ref "
        "| floor ms (bytes / flops) | kernel ÷ floor |")
    say("|---|---|---|---|---|---|---|---|---|")
    for d in dims:
        for L in lengths:
            t = inputs(1, L, 16, d, d, torch.bfloat16, seed=L)
            k = ms(lambda: gdn.gdn_fwd(**t, chunk_size=64))
            kb = ms(lambda: gdn.gdn_fwd(**t, **best[d])) if d in best else None
            with torch.no_grad():
                r = ms_slow(lambda: gated_delta_ref(**t, chunk_size=64))
            fl = None
            if fla is not None:
                try:
                    with torch.no_grad():
                        fl = ms(lambda: fla(t["q"], t["k"], t["v"], t["g"], t["beta"], scale=1.0,
                                            output_final_state=True))
                except Exception as e:  # noqa: BLE001
                    say(f"(fla failed: {type(e).__name__}: {str(e)[:200]})")
                    fla = None
            floor, f_b, f_f = floor_ms(ceil, L, 16, d, d)
            say(f"| {d} | {L} | {fmt(k)} | {fmt(kb)} | {fmt(fl)} | {fmt(r)} | {fmt(r / k) if r else '–'} | "
                f"{floor:.3f} ({f_b:.3f} / {f_f:.3f}) | {k / floor:.1f} |")
            rows.append(dict(op="gdn_fwd", d=d, L=L, kernel_ms=k, best_ms=kb, fla_ms=fl, ref_ms=r, floor_ms=floor))
            del t
            torch.cuda.empty_cache()
    say()


def bench_backward(ceil, lengths, rows, dims) -> None:
    say("## forward + backward (autograd Function, Triton backward), batch 1, 16 heads, bf16")
    say("| K = V | L | fwd ms (no grad) | fwd+bwd ms | bwd ÷ fwd | reference fwd+bwd ms | speed-up "
        "| floor ms (estimate) | ÷ floor |")
    say("|---|---|---|---|---|---|---|---|---|")
    for d in dims:
        for L in lengths:
            t = inputs(1, L, 16, d, d, torch.bfloat16, seed=L + 1, grad=True)
            go = torch.randn(1, L, 16, d, device=DEV, dtype=torch.bfloat16)
            with torch.no_grad():
                fwd = ms(lambda: gdn.gated_delta_rule(**t, chunk_size=64))
            fb = ms(lambda: torch.autograd.grad(gdn.gated_delta_rule(**t, chunk_size=64), list(t.values()), go),
                    rep=50)
            rb = ms_slow(lambda: torch.autograd.grad(gated_delta_ref(**t, chunk_size=64), list(t.values()), go),
                         n=3 if L <= 16384 else 1)
            floor = floor_ms(ceil, L, 16, d, d, backward=True)[0]
            say(f"| {d} | {L} | {fmt(fwd)} | {fmt(fb)} | {(fb - fwd) / fwd:.2f} | {fmt(rb)} | "
                f"{fmt(rb / fb) if rb else '–'} | {floor:.3f} | {fb / floor:.1f} |")
            rows.append(dict(op="gdn_fwd_bwd", d=d, L=L, fwd_ms=fwd, kernel_ms=fb, ref_ms=rb, floor_ms=floor))
            del t, go
            torch.cuda.empty_cache()
    say()


def bench_decode(ceil, rows) -> None:
    say("## decode step (one token, state in/out), bf16 q/k/v, fp32 state, 16 heads")
    say("| shape | kernel µs | reference µs | state bytes floor µs |")
    say("|---|---|---|---|")
    for b, d in ((1, 128), (16, 128), (1, 64)):
        gen = torch.Generator(device=DEV).manual_seed(b + d)
        r = lambda *s: torch.randn(*s, generator=gen, device=DEV)  # noqa: E731
        st = r(b, 16, d, d)
        kw = dict(q=F.normalize(r(b, 16, d), dim=-1).bfloat16(), k=F.normalize(r(b, 16, d), dim=-1).bfloat16(),
                  v=r(b, 16, d).bfloat16(), g=-F.softplus(r(b, 16)), beta=torch.sigmoid(r(b, 16)))
        k = ms(lambda: gdn_step.gated_delta_step(**kw, state=st)) * 1e3
        rr = ms(lambda: gated_delta_step_ref(**kw, state=st)) * 1e3
        fl = 2 * st.numel() * 4 / ceil["copy_Bps"] * 1e6
        say(f"| B{b}-H16-N{d}-P{d} | {k:.1f} | {rr:.1f} | {fl:.2f} |")
        rows.append(dict(op="gdn_step", batch=b, d=d, kernel_us=k, ref_us=rr, floor_us=fl))
    say()


def bench_train(rows, seconds: float = 5.0) -> None:
    """Training tokens/s of zoo models (models/<name>.yaml, fresh weights): the trainer's own loss
    and bf16 autocast, AdamW, random tokens, batch 8 x 1024, kernels (auto) vs references (ref)."""
    from evalkit.models.native.lm import NativeLM
    from evalkit.models.native_adapter import NativeAdapter
    from evalkit.spec import load_model_spec
    from evalkit.train import _autocast, _loss

    say("## training tokens/s (fwd + bwd + AdamW), batch 8 x 1024 tokens, bf16 autocast")
    say("| model | kernels tok/s | references tok/s | speed-up |")
    say("|---|---|---|---|")
    for name in ("gated_deltanet", "hybrid_gdn"):
        spec = load_model_spec(f"models/{name}.yaml")
        tps = {}
        for mode_ in ("auto", "ref"):
            os.environ["EVALKIT_KERNELS"] = mode_
            torch.manual_seed(0)
            model = NativeLM(NativeAdapter.config(spec), seed=0).to(DEV).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
            ids = torch.randint(0, model.cfg.vocab_size, (8, 1024), device=DEV)
            tgt = torch.full_like(ids, -100)
            tgt[:, -8:] = ids[:, -8:]

            def step():
                with _autocast("cuda"):
                    loss = _loss(model, ids, tgt, 0.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 2 or n < 3:
                step()
                n += 1
            torch.cuda.synchronize()
            tps[mode_] = n * ids.numel() / (time.perf_counter() - t0)
            del model, opt
        os.environ.pop("EVALKIT_KERNELS", None)
        say(f"| {name} | {tps['auto']:.0f} | {tps['ref']:.0f} | {tps['auto'] / tps['ref']:.2f} |")
        rows.append(dict(op="train", model=name, kernel_tps=tps["auto"], ref_tps=tps["ref"]))
    say()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4k and 16k only")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-checks", action="store_true", help="no correctness checks (a run split in two)")
    ap.add_argument("--sections", default="variants,forward,backward,decode,train",
                    help="comma-separated, run in this order")
    ap.add_argument("--dims", default="64,128", help="head dims K = V for forward / backward")
    a = ap.parse_args()
    dims = tuple(int(d) for d in a.dims.split(","))
    say(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
    try:
        import fla as _fla
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla
        say(f"flash-linear-attention {getattr(_fla, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        fla = None
        say(f"flash-linear-attention not available ({type(e).__name__}: {e})")
    rows: list[dict] = []
    ceil: dict = {}

    def save(ok: bool) -> None:  # after every section, so a run cut short keeps what it measured
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "gdn.md"), "w") as fh:
            fh.write("\n".join(LINES) + "\n")
        with open(os.path.join(a.out, "gdn.json"), "w") as fh:
            json.dump({"ceilings": ceil, "rows": rows, "checks_ok": ok}, fh, indent=1)

    ok = True
    if not a.skip_checks:
        ok = check_all()
        ok &= model_check()
        save(ok)
    ceil.update(ceilings())
    say(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.2f} TB/s (read + write), bf16 matmul "
        f"{ceil['bf16_flops'] / 1e12:.0f} TFLOP/s")
    say()
    lengths = [4096, 16384] if a.quick else [4096, 16384, 65536]
    best: dict = {}
    sections = {
        "variants": lambda: best.update(bench_variants(rows, dims)),
        "forward": lambda: bench_forward(ceil, lengths, rows, fla, best, dims),
        "backward": lambda: bench_backward(ceil, lengths, rows, dims),
        "decode": lambda: bench_decode(ceil, rows),
        "train": lambda: bench_train(rows),
    }
    for fn in (sections[name] for name in a.sections.split(",")):
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (one failing section must not lose the others)
            import traceback

            say(f"SECTION FAILED: {type(e).__name__}: {e}")
            traceback.print_exc()
            ok = False
        torch.cuda.empty_cache()
        save(ok)
    say("checks: " + ("all passed" if ok else "SOME FAILED"))
    save(ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
