"""The hf adapter's CUDA path, on tiny checkpoints of every tested family (nothing downloaded).

    python scripts/hf_gpu_check.py [--out DIR] [--length 4096]

Per family, on cuda: loads ``hf:DIR`` with dtype float32 and checks teacher-forced batched ==
unbatched (right padding) and greedy == teacher forcing on the model's own continuation; then
runs ``evalkit run`` (dtype auto → bfloat16) on the needle task at ``--length`` with the cost
probe, and prints one line per family (exit 1 if a check failed), with ``kernel_path`` (Mamba
families run evalkit's kernels by default on CUDA: ``kernels: auto``) and the cost row's ``path``.
Prints versions first. scripts/hf_kernels_gpu_check.py compares the routed kernels with
transformers' own path.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "hf"))


def main() -> int:
    import numpy as np
    import torch
    import transformers
    from hf_tiny import FAMILIES, build_checkpoint, train_tokenizer

    from evalkit.models import ADAPTERS
    from evalkit.runner import execute, plan
    from evalkit.scoring import predict_greedy, predict_teacher_forced
    from evalkit.spec import load_model_spec, load_task_spec
    from evalkit.store import Store
    from evalkit.tasks import TASKS
    from evalkit.tasks.base import Rendered
    from evalkit.tasks.text import decoder, render_text

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--length", type=int, default=4096)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    root = Path(args.out or tempfile.mkdtemp())
    tok = train_tokenizer("bpe")
    task = TASKS.get("needle")(TASKS.get("needle").Params())
    failed = 0
    for family in FAMILIES:
        t0 = time.perf_counter()
        d = build_checkpoint(family, root / family, tok)
        spec = load_model_spec(f"hf:{d}")
        fp32 = dataclasses.replace(spec, options=(("dtype", "float32"),))
        a = ADAPTERS.get("hf")(fp32, "cuda")
        rs = [render_text(task.sample(L, np.random.default_rng(i), i), L, tokenizer=tok)
              for i, L in enumerate((1000, 1500, 2047))]
        tf = predict_teacher_forced(a, rs)
        same = all(predict_teacher_forced(a, [r]) == [p] for r, p in zip(rs, tf))
        own = []
        for r in rs:
            (s, e), = r.answer_spans
            gen = a.generate(torch.tensor([r.input_ids[:s]]), e - s)[0].tolist()
            own.append(Rendered(r.input_ids[:s] + tuple(gen), r.answer_spans, "text"))
        agree = [p.answers for p in predict_teacher_forced(a, own)] == \
                [p.answers for p in predict_greedy(a, own, decoder(tok), 0)]
        kernel_path = a.describe()["kernel_path"]
        del a
        torch.cuda.empty_cache()
        tspec = root / "needle.yaml"
        tspec.write_text(f"task: needle\nlengths: [{args.length}]\nsamples: 4\nparams: {{depth: [0.0, 1.0]}}\n")
        cells = plan([load_task_spec(tspec)], [spec])
        res = execute(cells, root / f"runs-{family}", device="cuda", cost=True)
        store = Store.open_dir(root / f"runs-{family}")
        lengths = {r["length"] for c in store.cells() for r in store.records(c["cell_key"])}
        cost = store.costs()
        store.close()
        ok = same and agree and not res.failed and lengths == {args.length} and all(c["status"] == "ok" for c in cost)
        failed += not ok
        print(f"{family:11s} {'ok ' if ok else 'FAIL'} batched==unbatched {same} greedy==tf {agree} "
              f"failed cells {res.failed or 0} lengths {sorted(lengths)} "
              f"prefill {cost[0]['prefill_s'] * 1e3 if cost and cost[0]['prefill_s'] else float('nan'):.1f} ms "
              f"kernel_path {kernel_path} cost path {cost[0]['path'] if cost else None} "
              f"({time.perf_counter() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
