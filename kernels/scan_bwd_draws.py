"""How often the bf16 gradient test of the selective scan (tests/kernels/test_selective_scan_triton.py::
test_gradients_match_reference) misses its 3e-2 tolerance over random draws of its weights, with the
CUDA backward and with the Triton time backward (``EVALKIT_SCAN_CUDA_BWD=0``), on a GPU: kernels/NOTES.md
v11, run 5. The kernel path receives y's gradient in y's dtype; ``--rounded`` gives the float64
reference the same rounded weights (the test's fix), otherwise it gets them unrounded (the old test).

    PYTHONPATH=. python kernels/scan_bwd_draws.py [--rounded] [--draws 200]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "kernels"))
from test_selective_scan_triton import _inputs, _rel  # noqa: E402

from evalkit.kernels.selective_scan import selective_scan_ref  # noqa: E402
from evalkit.kernels.selective_scan import triton as ss_triton  # noqa: E402

CASES = [(1, 2, 1000, 2, False), (1, 2, 500, 4, True), (1, 3, 63, 4, False)]  # the test's, in bf16


def errs(b, d, L, n, full, dtype, seed, rounded) -> dict[str, float]:
    t = _inputs(b, d, L, n, dtype, seed=17 * L + d, full=full, requires_grad=True)
    torch.manual_seed(seed)
    h0 = torch.randn(b, d, n, device="cuda", requires_grad=True)
    wy, wh = torch.randn(b, d, L, device="cuda"), torch.randn(b, d, n, device="cuda")
    if rounded:
        wy = wy.to(dtype).float()
    args = {**t, "initial_state": h0}
    y, hT = ss_triton.selective_scan(**args, return_final_state=True)
    g = torch.autograd.grad((y.float() * wy).sum() + (hT * wh).sum(), list(args.values()))
    f64 = {k: v.detach().double().requires_grad_(True) for k, v in args.items()}
    y_r, hT_r = selective_scan_ref(**f64, return_final_state=True)
    g_r = torch.autograd.grad((y_r * wy.double()).sum() + (hT_r * wh.double()).sum(), list(f64.values()))
    return {k: _rel(a, r) for k, a, r in zip(args, g, g_r)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounded", action="store_true")
    ap.add_argument("--draws", type=int, default=200)
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; reference weights {'rounded' if a.rounded else 'unrounded'}")
    for case in CASES:
        for env in ("1", "0"):
            os.environ["EVALKIT_SCAN_CUDA_BWD"] = env
            worst: dict[str, tuple[float, int]] = {}
            over = 0
            for s in range(a.draws):
                e = errs(*case, torch.bfloat16, s, a.rounded)
                over += max(e.values()) >= 3e-2
                for k, v in e.items():
                    if v > worst.get(k, (0.0, 0))[0]:
                        worst[k] = (v, s)
            print(case, "cuda bwd" if env == "1" else "triton bwd", f"draws over 3e-2: {over}/{a.draws};",
                  " ".join(f"{k}:{v:.1e}(s{s})" for k, (v, s) in worst.items()))


if __name__ == "__main__":
    main()
