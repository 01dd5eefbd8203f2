"""Train, evaluate and write up the small-scale reproductions (issues 3 and 10).

    PYTHONPATH=. python scripts/repro.py train  --only zoology,frontier --out DIR [--parallel 16] [--deadline S]
    PYTHONPATH=. python scripts/repro.py eval   --only zoology,frontier --out DIR
    PYTHONPATH=. python scripts/repro.py status --only zoology,frontier --out DIR    # one line per run
    python scripts/repro.py collect --out DIR                                         # → reports/repro/data/
    python scripts/repro.py report [--data reports/repro/data]                        # → reports/repro/*.md

The runs are listed in experiments/repro/grid.py. ``train`` writes a model spec and a recipe per
run under DIR/specs/, builds the fixed training sets once (DIR/pools, shared by all runs), then
runs ``evalkit train`` for every run as its own process, ``--parallel`` at a time on one GPU
(tiny models leave a GPU idle one at a time). ``--deadline`` (seconds) stops starting new runs
after that long, so a time-boxed device call still ends with whatever finished. ``eval`` runs
``evalkit run`` over each experiment's evaluation specs with the trained checkpoints into
DIR/stores/<experiment>/evalkit.sqlite. ``collect`` packs those stores (xz, prompts dropped) and a
summary of every run's training log into reports/repro/data/<experiment>/; ``report`` reads them and
writes reports/repro/<experiment>.md (plus the hand-written reading in experiments/repro/notes/).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _grid():
    spec = importlib.util.spec_from_file_location("repro_grid", ROOT / "experiments" / "repro" / "grid.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["repro_grid"] = mod
    spec.loader.exec_module(mod)
    return mod


def _select(g, a):
    """The runs of ``--only`` experiments whose name contains ``--match``, with ``--time-limit`` applied."""
    import dataclasses

    runs = [r for r in g.runs(a.only.split(",") if a.only else None) if a.match in r.name]
    if a.time_limit:
        runs = [dataclasses.replace(r, time_limit=a.time_limit) for r in runs]
    return runs


def _write_specs(run, out: Path, pool: int) -> tuple[Path, Path]:
    specs = out / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    ckpt = out / "ckpt" / run.name
    model = {"name": run.name, "kind": "native", "description": f"{run.exp}: {run.label}", "arch": run.arch}
    mpath = specs / f"{run.name}.train.yaml"  # what the trainer builds
    mpath.write_text(yaml.safe_dump(model, sort_keys=False))
    model["checkpoint"] = os.path.relpath(ckpt, specs)  # what `evalkit run` evaluates once trained
    (specs / f"{run.name}.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    lengths = [yaml.safe_load((ROOT / t).read_text())["lengths"] for t in run.train_tasks]
    top = min(max(max(x) for x in lengths), run.train.get("max_length", 1 << 30))
    train = {"steps": 100000, "time_limit": run.time_limit, "lr": run.lr, "batch_tokens": 64 * top,
             "warmup": 0.02, "weight_decay": 0.1, "eval_every": 500, "eval_samples": 64, "save_every": 2000,
             "target_acc": 0.99, "pool": pool, "seed": run.seed, "save_dtype": "bfloat16", **run.train}
    recipe = {"model": str(mpath), "tasks": list(run.train_tasks), "out": str(ckpt), "device": "auto",
              "description": f"{run.exp}: {run.label}, lr {run.lr:g}", "train": train}
    rpath = specs / f"{run.name}.recipe.yaml"
    rpath.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return mpath, rpath


def build_pools(runs, out: Path, workers: int, n: int) -> None:
    """Every distinct (task spec, length) pool the runs will draw from, built once up front."""
    from evalkit.spec import load_task_spec
    from evalkit.trainpool import build_pool

    seen = set()
    for run in runs:
        for t in run.train_tasks:
            spec = load_task_spec(str(ROOT / t))
            top = run.train.get("max_length", max(spec.lengths))
            for length in spec.lengths:
                key = (t, length, run.seed)
                if length <= top and key not in seen:
                    seen.add(key)
                    t0 = time.time()
                    build_pool(spec, run.seed, length, n, workers, out / "pools")
                    print(f"pool {t} L={length}: {time.time() - t0:.1f} s", flush=True)


def train(a) -> None:
    g = _grid()
    out = Path(a.out).resolve()
    runs = _select(g, a)
    build_pools(runs, out, a.workers, a.pool)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    queue = [r for r in runs if not (out / "ckpt" / r.name / "model.safetensors").is_file()]
    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    t0 = time.time()
    while queue or running:
        while queue and len(running) < a.parallel and time.time() - t0 < a.deadline:
            run = queue.pop(0)
            _, rpath = _write_specs(run, out, a.pool)
            logs = out / "logs"
            logs.mkdir(exist_ok=True)
            log = open(logs / f"{run.name}.txt", "w")  # noqa: SIM115 (open while the run lives; closed when it ends)
            cmd = [sys.executable, "-m", "evalkit.cli", "train", "--recipe", str(rpath), "--pool-dir",
                   str(out / "pools"), "--pool-workers", "1", "--threads", "1"]
            running[run.name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log,
                                 time.time())
            print(f"[{time.time() - t0:6.0f}s] start {run.name}", flush=True)
        if queue and time.time() - t0 >= a.deadline:
            print(f"deadline: {len(queue)} runs not started: {', '.join(r.name for r in queue)}", flush=True)
            queue = []
        for name, (p, log, ts) in list(running.items()):
            if p.poll() is not None:
                log.close()
                del running[name]
                print(f"[{time.time() - t0:6.0f}s] done {name}: exit {p.returncode} after {time.time() - ts:.0f} s",
                      flush=True)
        time.sleep(1)


def evaluate(a) -> None:
    g = _grid()
    out = Path(a.out).resolve()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    by_exp: dict[str, list] = {}
    for run in _select(g, a):
        if (out / "ckpt" / run.name / "model.safetensors").is_file():
            by_exp.setdefault(run.exp, []).append(run)
    for exp, runs in by_exp.items():
        tasks = sorted({t for r in runs for t in r.eval_tasks})
        models = ",".join(str(out / "specs" / f"{r.name}.yaml") for r in runs)
        cmd = [sys.executable, "-m", "evalkit.cli", "run", *tasks, "--models", models, "--output-dir",
               str(out / "stores" / exp), "--no-cost"]
        t0 = time.time()
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        print(f"eval {exp}: {len(runs)} models, exit {p.returncode}, {time.time() - t0:.0f} s", flush=True)
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-3000:], flush=True)


def _pack_store(store: Path, dest: Path) -> None:
    """A compact copy of a store for the repo: prompts dropped (each is regenerated from its cell's
    sample key; ``prompt_hash`` stays), vacuumed, xz-compressed (12 MB → 0.6 MB for zoology).
    Read it with ``xz -dk FILE`` then ``evalkit export --store FILE``."""
    import lzma
    import shutil
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "evalkit.sqlite"
        shutil.copy(store, db)
        c = sqlite3.connect(db)
        c.execute("UPDATE records SET prompt = NULL")
        c.commit()
        c.execute("VACUUM")
        c.close()
        dest.write_bytes(lzma.compress(db.read_bytes(), preset=9))


def _unpacked(path: Path, tmp: Path) -> Path:
    import lzma

    db = tmp / (path.parent.name + ".sqlite")
    db.write_bytes(lzma.decompress(path.read_bytes()))
    return db


def collect(a) -> None:
    """Each experiment's store and a compact summary of its runs' training logs → reports/repro/data/<exp>/."""
    g = _grid()
    out, data = Path(a.out), Path(a.data)
    for exp in g.EXPERIMENTS:
        store = out / "stores" / exp / "evalkit.sqlite"
        if not store.is_file():
            continue
        (data / exp).mkdir(parents=True, exist_ok=True)
        _pack_store(store, data / exp / "evalkit.sqlite.xz")
        summary = {}
        for run in g.EXPERIMENTS[exp]():
            log = out / "ckpt" / run.name / "train_log.jsonl"
            if not log.is_file():
                continue
            rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            start = rows[0]
            end = next((r for r in reversed(rows) if r["event"] == "end"), {})
            summary[run.name] = {
                "label": run.label, "lr": run.lr, "d_model": run.arch["d_model"], "train_tasks": list(run.train_tasks),
                "device_name": start.get("device_name"), "command": start.get("command"),
                "params": start.get("params"), "steps": end.get("step"), "stopped": end.get("stopped"),
                "wall_s": end.get("wall_s"), "tokens_per_s": end.get("tokens_per_s"), "mfu": end.get("mfu"),
                "evals": [{k: r[k] for k in ("step", "acc", "secondary", "wall_s")} for r in rows if r["event"] == "eval"],
            }
        (data / exp / "runs.json").write_text(json.dumps(summary, indent=1))
        print(f"{exp}: {len(summary)} runs collected")


def status(a) -> None:
    """One line per run: steps, why it stopped, wall time, last held-out whole-sample accuracy /
    query (or digit) accuracy."""
    g = _grid()
    out = Path(a.out).resolve()
    for run in _select(g, a):
        log = out / "ckpt" / run.name / "train_log.jsonl"
        if not log.is_file():
            print(f"{run.name}: not trained")
            continue
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        end = next((r for r in reversed(rows) if r["event"] == "end"), None)
        ev = next((r for r in reversed(rows) if r["event"] == "eval"), {})
        sec = {k: v.get("query_acc", v.get("digit_acc")) for k, v in ev.get("secondary", {}).items()}
        acc = " ".join(f"{k}={v:.3f}" + (f"/{sec[k]:.3f}" if sec.get(k) is not None else "")
                       for k, v in ev.get("acc", {}).items())
        tail = f"{end['step']} steps {end['stopped']} {end['wall_s']:.0f}s" if end else f"running step {ev.get('step')}"
        print(f"{run.name}: {tail} {acc}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("train", "eval", "status"):
        s = sub.add_parser(name)
        s.add_argument("--only", default="")
        s.add_argument("--out", default=os.environ.get("OUT", "repro_out"))
        s.add_argument("--parallel", type=int, default=16)
        s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        s.add_argument("--deadline", type=float, default=1e9)
        s.add_argument("--match", default="", help="only runs whose name contains this")
        s.add_argument("--time-limit", type=float, help="override every run's training seconds")
        s.add_argument("--pool", type=int, default=20000, help="fixed training set size per (task, length)")
    s = sub.add_parser("collect", help="copy stores + run summaries from --out into reports/repro/data")
    s.add_argument("--out", required=True)
    s.add_argument("--data", default=str(ROOT / "reports" / "repro" / "data"))
    s = sub.add_parser("report")
    s.add_argument("--data", default=str(ROOT / "reports" / "repro" / "data"))
    a = ap.parse_args()
    if a.cmd == "train":
        train(a)
    elif a.cmd == "eval":
        evaluate(a)
    elif a.cmd == "status":
        status(a)
    elif a.cmd == "collect":
        collect(a)
    else:
        write_reports(Path(a.data))



# --------------------------------------------------------------------------- write-ups
PAPER = {
    "zoology": ("Zoology (Arora et al. 2023), Fig. 2: MQAR, 2 layers, widths 64-512. Attention solves MQAR "
                "(≈ 1.0) at every width and length; gated-convolution and Mamba-style recurrent models fall with "
                "sequence length at small width and recover as width (state size) grows."),
    "mamba2": ("Mamba-2 (Dao & Gu 2024), Fig. 8: MQAR with T/4 key-value pairs, T ∈ {256, 512}, 2 layers, widths "
               "32-256. Accuracy orders by state size: Mamba-2 N=256 > N=64 > N=16 > Mamba-1 (N=16); the larger "
               "state gives the larger gain at the longer T."),
    "frontier": ("Based (Arora et al. 2024), Fig. 2/3: on MQAR, recall accuracy rises with recurrent state size along "
                 "one frontier across architectures; attention sits at full accuracy with the largest state "
                 "(its KV cache grows with T); sliding-window attention is the least state-efficient (it recalls "
                 "only keys inside its window)."),
    "fraction": ("Hybrid studies (Jamba: Lieber et al. 2024; Waleffe et al. 2024, 'An Empirical Study of "
                 "Mamba-based Language Models'): a few attention layers (≈ 1 in 8) restore the recall a pure "
                 "Mamba-2 stack lacks, at a fraction of the KV cache of a transformer."),
    "copying": ("Jelassi et al. 2024 ('Repeat After Me'), Fig. 1/3: trained on strings of ≤ 50 tokens, a "
                "transformer copies well and generalises to longer strings (with a suitable position scheme), "
                "while Mamba's accuracy collapses once the string outgrows what its fixed state holds."),
}


def _cells(store: Path) -> list[dict]:
    import sqlite3

    c = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    c.row_factory = sqlite3.Row
    rows = [dict(r) for r in c.execute(
        "SELECT model, spec, context_length, params, n_samples, accuracy, ci_low, ci_high, metrics, model_info, "
        "run_id FROM cells WHERE status = 'complete'")]
    for r in rows:
        r["metrics"] = json.loads(r["metrics"] or "{}")
        r["model_info"] = json.loads(r["model_info"] or "{}")
        r["params"] = json.loads(r["params"] or "{}")
    return rows


def _fmt(mean: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if lo is None else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _qa(cell: dict) -> tuple[float, float, float]:
    """(query accuracy, CI) if the task has one, else whole-sample accuracy (CI)."""
    m = cell["metrics"].get("query_acc")
    if m:
        return m["mean"], m["ci_low"], m["ci_high"]
    return cell["accuracy"], cell["ci_low"], cell["ci_high"]


def _best(runs: dict, cells: list[dict], match, spec: str, length: int | None = None, key=_qa):
    """Best over the learning-rate sweep (as the papers report): (cell, run summary) or (None, None)."""
    best = (None, None)
    for name, info in runs.items():
        if not match(name, info):
            continue
        for c in cells:
            here = c["model"] == name and c["spec"] == spec and (length is None or c["context_length"] == length)
            if here and (best[0] is None or key(c)[0] > key(best[0])[0]):
                best = (c, info)
    return best


def _state_bytes(cell: dict, length: int) -> int:
    mi = cell["model_info"]
    kv = mi.get("kv_bytes_per_token") or 0
    win = mi.get("window") or 0
    tokens = min(length, win) if win else length
    return int(kv * tokens + (mi.get("fixed_state_bytes") or 0))


def write_reports(data: Path) -> None:
    outdir = ROOT / "reports" / "repro"
    pages = {"zoology": _zoology, "mamba2": _mamba2, "frontier": _frontier, "fraction": _fraction,
             "copying": _copying}
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    cells = {e: _cells(_unpacked(data / e / "evalkit.sqlite.xz", tmp)) for e in _grid().EXPERIMENTS
             if (data / e / "evalkit.sqlite.xz").is_file()}
    runs_of = {e: json.loads((data / e / "runs.json").read_text()) for e in cells}
    for exp, fn in pages.items():
        if exp not in cells:
            continue
        runs = runs_of[exp]
        extra = {"long_cells": cells.get("long", []), "long_runs": runs_of.get("long", {}),
                 "r4_cells": cells.get("attn_long", []), "r4_runs": runs_of.get("attn_long", {}),
                 "r3_cells": cells.get(exp + "2", []), "r3_runs": runs_of.get(exp + "2", {}),
                 "r5_cells": cells.get(exp + "5", []), "r5_runs": runs_of.get(exp + "5", {}),
                 "r5_store": tmp / f"{exp}5.sqlite"}
        if exp == "frontier" and "zoology" in cells:
            extra |= {"zoo_cells": cells["zoology"], "zoo_runs": runs_of["zoology"]}
        body = fn(runs, cells[exp], **extra)
        allruns = [*runs.values(), *extra["r3_runs"].values(), *extra["r5_runs"].values(),
                   *(extra["long_runs"].values() if exp in ("zoology", "mamba2", "frontier") else ()),
                   *(extra["r4_runs"].values() if exp == "zoology" else ())]
        dev = sorted({r["device_name"] for r in allruns if r.get("device_name")})
        steps = [r["steps"] for r in allruns if r.get("steps")]
        text = (f"# Reproduction: {exp}\n\n**Paper.** {PAPER[exp]}\n\n"
                f"**Setting here.** Runs from `experiments/repro/grid.py` ({exp}()), trained on {', '.join(dev)} with "
                "`PYTHONPATH=. python scripts/repro.py train --only " + exp + " --out DIR`, evaluated with "
                "`scripts/repro.py eval` (that is `evalkit run` on the specs in `experiments/repro/tasks/`), "
                f"collected into `reports/repro/data/{exp}/` and written by `scripts/repro.py report`. "
                f"{len(allruns)} training runs, {min(steps) if steps else 0}–{max(steps) if steps else 0} steps each "
                "(each run has a wall-clock budget, see grid.py; it stops early at 0.99 held-out accuracy). "
                "Round 1 numbers are the best over the learning-rate sweep (3e-3, 1e-2), chosen on the same "
                "held-out samples they are reported on, as the papers report the best of their sweep; later rounds "
                "use one lr each (named). Brackets: 95 % "
                "intervals — per-query accuracy (MQAR; teacher-forced, a secondary metric): bootstrap over "
                "samples; whole-sample accuracy: Wilson. "
                + ("One training seed per run in rounds 1-4; round 5 trains three seeds of each model and reports "
                   "each.\n\n" if extra["r5_runs"] else "One training seed.\n\n") + body)
        notes = ROOT / "experiments" / "repro" / "notes" / f"{exp}.md"
        if notes.is_file():  # the hand-written reading of the numbers above
            text += "\n" + notes.read_text()
        (outdir / f"{exp}.md").write_text(text)
        print(f"wrote {outdir / f'{exp}.md'}")


def _zoology(runs, cells, long_runs=None, long_cells=(), r4_runs=None, r4_cells=(), **_):
    lines = []
    for spec, title in (("mqar_128_8", "sequence 128, 8 pairs"), ("mqar_512_64", "sequence 512, 64 pairs")):
        lines += [f"## {title} — per-query accuracy (ours) vs paper\n", "| model | d=64 | d=128 | d=256 | paper |",
                  "|---|---|---|---|---|"]
        for label, paper in (("attention", "≈ 1.0 at every width"), ("mamba", "below attention at small width, rises with width"),
                             ("mamba2", "(not in Zoology; Mamba-2 paper: above Mamba)")):
            row = [label]
            for d in (64, 128, 256):
                c, info = _best(runs, cells, lambda n, i, d=d, label=label, spec=spec: i["label"] == label
                                and i["d_model"] == d and spec in n, spec)
                row.append("–" if c is None else f"{_fmt(*_qa(c))} (lr {info['lr']:g}, {info['steps']} st)")
            lines.append("| " + " | ".join(row + [paper]) + " |")
        lines.append("")
    lines += _round2(long_runs, long_cells, ("attention", "mamba"), (64, 128, 256), "mqar_128_8",
                     "sequence 128, 8 pairs, 4 minutes per run (10 runs sharing the GPU instead of 16), lr 3e-3")
    if r4_runs:
        lines += ["## Round 4: attention only, sequence 128, 8 pairs, 6.7 minutes per run (4 runs sharing the GPU)\n",
                  "| model | lr | per-query accuracy | steps |", "|---|---|---|---|"]
        for name, info in r4_runs.items():
            c = next((x for x in r4_cells if x["model"] == name and x["spec"] == "mqar_128_8"), None)
            if c is not None:
                lines.append(f"| attention d={info['d_model']} | {info['lr']:g} | {_fmt(*_qa(c))} | {info['steps']} |")
        lines.append("")
    return "\n".join(lines)


def _long_cell(long_runs, long_cells, label, d, spec):
    for name, info in (long_runs or {}).items():
        if info["label"] == label and info["d_model"] == d and spec in name:
            for c in long_cells:
                if c["model"] == name and c["spec"] == spec:
                    return c, info
    return None, None


def _round2(long_runs, long_cells, labels, widths, spec, title):
    if not long_runs:
        return []
    lines = [f"## Round 2: {title}\n", "| model | " + " | ".join(f"d={d}" for d in widths) + " |",
             "|---" * (len(widths) + 1) + "|"]
    for label in labels:
        row = [label]
        for d in widths:
            c, info = _long_cell(long_runs, long_cells, label, d, spec)
            row.append("–" if c is None else f"{_fmt(*_qa(c))} ({info['steps']} st, {info['wall_s']:.0f} s)")
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _mamba2(runs, cells, long_runs=None, long_cells=(), **_):
    lines = ["## per-query accuracy, best over lr (ours) vs paper direction\n",
             "| model | state N | T=256 (64 pairs) | T=512 (128 pairs) |", "|---|---|---|---|"]
    for label in ("mamba N=16", "mamba2 N=16", "mamba2 N=64", "mamba2 N=256"):
        row = [label.split()[0], label.split("=")[1]]
        for spec in ("mqar_256_t4", "mqar_512_t4"):
            c, info = _best(runs, cells, lambda n, i, label=label, spec=spec: i["label"] == label and spec in n, spec)
            row.append("–" if c is None else f"{_fmt(*_qa(c))} (lr {info['lr']:g}, {info['steps']} st)")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Paper (direction): Mamba-2 N=256 > N=64 > N=16 > Mamba-1 N=16 at both T.", ""]
    lines += _round2(long_runs, long_cells, ("mamba N=16", "mamba2 N=16", "mamba2 N=64", "mamba2 N=256"), (128,),
                     "mqar_256_t4", "T = 256 (64 pairs), 4 minutes per run (10 runs sharing the GPU), lr 1e-2")
    return "\n".join(lines)


def _frontier(runs, cells, zoo_cells=(), zoo_runs=None, long_runs=None, long_cells=(), r3_runs=None, r3_cells=(),
              r5_runs=None, r5_cells=(), r5_store=None, **_):
    spec, length = "mqar_512_64", 512
    pts = []
    for label in sorted({i["label"] for i in runs.values()}):
        c, info = _best(runs, cells, lambda n, i, label=label: i["label"] == label, spec)
        if c:
            pts.append((label, c, info))
    for label in ("attention", "mamba", "mamba2"):
        c, info = _best(zoo_runs or {}, list(zoo_cells), lambda n, i, label=label: i["label"] == label
                        and i["d_model"] == 128 and spec in n, spec)
        if c:
            pts.append((label + (" N=16" if label == "mamba" else " N=64" if label == "mamba2" else ""), c, info))
    pts.sort(key=lambda p: _state_bytes(p[1], length))
    lines = ["## MQAR (512 tokens, 64 pairs), width 128: accuracy vs recurrent state\n",
             "| model | state bytes at T=512 (per sequence) | per-query accuracy | lr | steps |", "|---|---|---|---|---|"]
    for label, c, info in pts:
        lines.append(f"| {label} | {_state_bytes(c, length):,} | {_fmt(*_qa(c))} | {info['lr']:g} | {info['steps']} |")
    lines += ["", ("State bytes: the model's own `describe()` (fixed SSM state + KV bytes per token × tokens held; a "
                   "sliding window holds at most `window` tokens), summed over layers, at the stored dtype."), ""]
    spec, length = "mqar_256_t4", 256
    pts = []
    for rr, cc in ((long_runs or {}, long_cells), (r3_runs or {}, r3_cells)):
        for name, info in rr.items():
            c = next((x for x in cc if x["model"] == name and x["spec"] == spec), None)
            if c is not None and info["d_model"] == 128 and spec in name:  # trained on this spec
                pts.append((info["label"], c, info))
    pts.sort(key=lambda p: _state_bytes(p[1], length))
    lines += ["## Rounds 2-3: hard MQAR T = 256 (64 pairs, 31 queried), width 128, lr 1e-2, 4 minutes per run\n",
              "| model | state bytes at T=256 | per-query accuracy | steps | round |", "|---|---|---|---|---|"]
    for label, c, info in pts:
        rnd = "2 (10 runs on the GPU)" if c["model"].startswith("long") else "3 (15 runs on the GPU)"
        lines.append(f"| {label} | {_state_bytes(c, length):,} | {_fmt(*_qa(c))} | {info['steps']} | {rnd} |")
    if r5_runs:
        known = {label: _state_bytes(c, length) for label, c, _ in pts}  # same architectures, earlier rounds
        lines += ["", *_round5(r5_runs, list(r5_cells), r5_store, known)]
    return "\n".join(lines)


PLATEAU_EXIT = 0.10  # per-query accuracy that counts as "left the plateau" in round 5 (see _round5)
DISTANCES = (0, 64, 128, 192, 256)  # round 5: per-query accuracy by how far back the queried value is


def _by_distance(store: Path, spec_path: str, length: int, models: list[str]) -> dict[str, list[float | None]]:
    """Per-query accuracy of each model's cell by the distance (tokens) from the query's key back to
    the queried pair's value, in the ``DISTANCES`` bins. The samples are regenerated from the cell's
    sample key (``runner.make_sample``; the packed stores drop prompts) and checked against it; a
    query at key position p and its value at position a are within one layer's reach of a
    sliding window w iff p - a < w."""
    import sqlite3
    import tempfile

    from evalkit.runner import make_sample, plan, render
    from evalkit.spec import load_model_spec, load_task_spec

    with tempfile.TemporaryDirectory() as tmp:  # any native model: sample keys do not depend on it
        probe = Path(tmp) / "probe.yaml"
        probe.write_text(yaml.safe_dump({"name": "probe", "kind": "native", "arch": {
            "vocab_size": 512, "d_model": 32, "n_layers": 1, "pattern": "A", "n_heads": 1, "headdim": 32, "d_ff": 0}}))
        (cell,) = plan([load_task_spec(str(ROOT / spec_path))], [load_model_spec(str(probe))], lengths=[length])
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    dist: dict[int, list[int]] = {}
    out = {}
    for model in models:
        row = db.execute("SELECT cell_key, sample_key FROM cells WHERE model = ? AND context_length = ? AND "
                         "status = 'complete'", (model, length)).fetchone()
        if row is None:
            continue
        if row[1] != cell.sample_key:
            raise ValueError(f"{model}: stored sample key {row[1]} is not {spec_path}'s {cell.sample_key}")
        hits: list[list[int]] = [[0, 0] for _ in DISTANCES[1:]]
        for idx, answer, prediction in db.execute("SELECT idx, answer, prediction FROM records WHERE cell_key = ?",
                                                  (row[0],)):
            if idx not in dist:
                r = render(cell, make_sample(cell, idx))
                ids = r.input_ids
                dist[idx] = [(s - 1) - (ids.index(ids[s - 1]) + 1) for s, _ in r.answer_spans]  # bare `key <pad>`
            for d, g, p in zip(dist[idx], str(answer).split(" | "), str(prediction).split(" | ")):
                b = next(i for i in range(len(DISTANCES) - 1) if d < DISTANCES[i + 1])
                hits[b][0] += g == p
                hits[b][1] += 1
        out[model] = [h / n if n else None for h, n in hits]
    return out


def _round5(runs: dict, cells: list[dict], store: Path | None, known_state: dict[str, int]) -> list[str]:
    """Round 5: the Based frontier in Zoology's query form, three seeds per model."""
    spec, length = "mqar_256_t4_zoo", 256
    cell_of = {c["model"]: c for c in cells if c["spec"] == spec and c["context_length"] == length}
    labels: list[str] = []
    for i in runs.values():
        if i["label"] not in labels:
            labels.append(i["label"])
    names = {label: sorted(n for n, i in runs.items() if i["label"] == label) for label in labels}

    def state(label: str) -> int | None:
        c = next((cell_of[n] for n in names[label] if n in cell_of), None)
        return _state_bytes(c, length) if c else known_state.get(label)

    labels.sort(key=lambda lb: state(lb) or 0)
    dists = _by_distance(store, next(iter(runs.values()))["train_tasks"][0], length, list(cell_of)) \
        if store is not None and store.is_file() else {}
    dev = sorted({i["device_name"] for i in runs.values() if i.get("device_name")})
    # the runs by the evaluation call that scored them (the store's run_id): the first call's runs trained
    # together; runs re-run afterwards (after a crash) trained and were evaluated in a later call
    calls = sorted({str(c.get("run_id")) for c in cell_of.values()})
    group = [[n for n in runs if n in cell_of and str(cell_of[n].get("run_id")) == call] for call in calls]
    crashed = [n for n in runs if n not in cell_of]
    first = group[0] if group else []
    wall = [runs[n]["wall_s"] for n in first if runs[n].get("stopped") == "time_limit" and runs[n].get("wall_s")]
    budget = f"{min(wall):.0f}" if wall else "?"
    when = (f"{len(first) + len(crashed)} runs started together on one {', '.join(dev)} ({len(first)} of them "
            f"trained, sharing it)" if crashed else f"{len(first)} runs trained together on one {', '.join(dev)}, "
            "sharing it")
    when += f", each with a {budget} s training budget (`--time-limit {budget}`)"
    for later in group[1:]:
        labels_later = sorted({runs[n]["label"] for n in later})
        stops = {runs[n].get("stopped") for n in later}
        ws = [runs[n]["wall_s"] for n in later if runs[n].get("wall_s")]
        how = (f"stopped at the target accuracy (0.99 held-out) after {min(ws):.0f}–{max(ws):.0f} s"
               if stops == {"target_acc"} and ws else f"stopped by {', '.join(sorted(map(str, stops)))}")
        when += (f"; {len(later)} ({', '.join(labels_later)}) trained later, together in a separate call, and "
                 f"{how} (see the reading below)")
    lines = [f"## Round 5: Zoology's query form, T = 256 (64 pairs, 63 queried), width 128, 3 seeds\n",
             ("Task `mqar_256_t4_zoo`: the 64 pairs, then 63 queries written as Zoology writes them, `key <pad>` "
              "(bare, the answer hidden: a label, never model input), so no earlier answer can be eliminated. "
              f"256 sequences a step, weight decay 0.01, no warm-up, eval every 250 steps; {when}; lr as in the table. "
              f"Accuracy: teacher-forced per-query accuracy on the spec's 256 held-out samples (16,128 queries). "
              f"A seed counts as *off the plateau* when its per-query accuracy is ≥ {PLATEAU_EXIT:.2f} "
              "(1/64 = 0.016 is a uniform guess among the pairs' values; the runs below the threshold sit at "
              "0.01–0.04)."), "",
             "| model | state bytes at T=256 | lr | per-query, mean of seeds (min–max) | best seed: per-query | "
             "best seed: whole-sample | steps (s0 / s1 / s2) | seeds off the plateau |",
             "|---|---|---|---|---|---|---|---|"]
    for label in labels:
        rs = [(n, runs[n]) for n in names[label]]
        done = [(n, i) for n, i in rs if n in cell_of]
        sb = state(label)
        sbt = "–" if sb is None else f"{sb:,}"
        lr = f"{rs[0][1]['lr']:g}"
        if not done:
            sbt += "" if sb is None else " (same architecture, table above)"
            lines.append(f"| {label} | {sbt} | {lr} | no result: all {len(rs)} seeds crashed at step 0 "
                         "| – | – | – | – |")
            continue
        q = [_qa(cell_of[n])[0] for n, _ in done]
        bn, bi = max(done, key=lambda x: _qa(cell_of[x[0]])[0])
        bc = cell_of[bn]
        off = [n.rsplit("-", 1)[1] for n, _ in done if _qa(cell_of[n])[0] >= PLATEAU_EXIT]
        steps = " / ".join(str(i["steps"]) if i.get("steps") else "crashed" for _, i in rs)
        mean = f"{sum(q) / len(q):.2f} ({min(q):.2f}–{max(q):.2f})"
        if len(done) < len(rs):
            mean += f", {len(done)} seeds"
        lines.append(f"| {label} | {sbt} | {lr} | {mean} | {_fmt(*_qa(bc))} ({bn.rsplit('-', 1)[1]}) | "
                     f"{_fmt(bc['accuracy'], bc['ci_low'], bc['ci_high'])} | {steps} | "
                     f"{len(off)} of {len(rs)}{': ' + ', '.join(off) if off else ''} |")
    bins = [f"{a}–{b - 1}" for a, b in zip(DISTANCES, DISTANCES[1:])]
    lines += ["", ("Each run. *By distance*: per-query accuracy split by how many tokens back from the query's key "
                   "the queried value stands (a value up to w − 1 back is within one sliding-window layer's reach; "
                   "two stacked layers reach 2(w − 1)). *Training curve*: per-query accuracy on 64 held-out samples "
                   "during training, every 500 steps (every 250 in runs under 1,000 steps) and at the end."), "",
              "| model | seed | steps | per-query | whole-sample | by distance " + " / ".join(bins) +
              " | training curve |", "|---|---|---|---|---|---|---|"]
    for label in labels:
        for n in names[label]:
            i, c = runs[n], cell_of.get(n)
            seed = n.rsplit("-", 1)[1]
            if c is None:
                lines.append(f"| {label} | {seed} | crashed at step 0 | – | – | – | – |")
                continue
            d = dists.get(n)
            dd = "–" if d is None else " / ".join("–" if v is None else f"{v:.2f}" for v in d)
            every = 500 if i["steps"] >= 1000 else 250
            curve = [e for e in i["evals"] if e["step"] % every == 0 or e["step"] == i["steps"]]
            cv = ", ".join(f"{next(iter(e['secondary'].values()))['query_acc']:.2f}" for e in curve)
            lines.append(f"| {label} | {seed} | {i['steps']} | {_fmt(*_qa(c))} | "
                         f"{_fmt(c['accuracy'], c['ci_low'], c['ci_high'])} | {dd} | {cv} |")
    return lines + [""]


def _fraction(runs, cells, r3_runs=None, r3_cells=(), **_):
    lines = _fraction_table(runs, cells, "mqar_512_t4", "Round 1: hard MQAR T = 512, lr 3e-3, 3 minutes per run")
    if r3_runs:
        lines += ["", *_fraction_table(r3_runs, r3_cells, "mqar_256_t4",
                                       "Round 3: hard MQAR T = 256, lr 1e-2, 5 minutes per run")]
    return "\n".join(lines)


def _fraction_table(runs, cells, mqar, title):
    lines = [f"## 8-layer Mamba-2 stack (width 128) with k attention layers — {title}\n",
             f"| layout | attention layers | {mqar} (per-query) | steps | multi_query 256 | 1024 | 4096 | state bytes at 4096 |",
             "|---|---|---|---|---|---|---|---|"]
    labels = []
    for i in runs.values():
        if i["label"] not in labels:
            labels.append(i["label"])
    for label in labels:
        c, info = _best(runs, cells, lambda n, i, label=label: i["label"] == label, mqar)
        if c is None:
            continue
        name = c["model"]
        row = [label, str(len(c["model_info"].get("attn_layer_idx") or [])), _fmt(*_qa(c)), str(info["steps"])]
        for L in (256, 1024, 4096):
            mq = [x for x in cells if x["model"] == name and x["spec"] == "multi_query_eval" and x["context_length"] == L]
            row.append("–" if not mq else _fmt(mq[0]["accuracy"], mq[0]["ci_low"], mq[0]["ci_high"]))
        row.append(f"{_state_bytes(c, 4096):,}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", ("multi_query columns are the same model (whole-sample accuracy: both queried values right); 4096 "
                   "is 4× the longest training length.")]
    return lines


def _copying(runs, cells, r3_runs=None, r3_cells=(), **_):
    lines = _copy_table(runs, cells, "copy_test", (25, 50, 100, 150, 200),
                        "Round 1: trained on ≤ 50 digits (256 tokens), tested at 512 tokens; lr chosen on 50 digits")
    if r3_runs:
        for spec, digits, where in (("copy_test_256", (25, 50, 75, 100), "at the training length, 256 tokens"),
                                    ("copy_test", (25, 50, 100, 150, 200), "at 512 tokens")):
            lines += ["", *_copy_table(r3_runs, r3_cells, spec, digits, f"Round 3: same recipe, one lr each, tested {where}")]
    return "\n".join(lines)


def _copy_table(runs, cells, spec, digits, title):
    lines = [f"## copy_number — {title}\n", "| model | steps | " + " | ".join(f"{d} digits" for d in digits) + " |",
             "|---" * (len(digits) + 2) + "|"]
    for label in ("transformer", "mamba", "mamba2"):
        # lr chosen on the in-distribution 50-digit cell
        c, info = _best(runs, cells, lambda n, i, label=label: i["label"] == label, spec,
                        key=lambda x: (x["accuracy"] if x["params"].get("digits") == 50 else -1,))
        if c is None:
            continue
        row = [f"{label} (lr {info['lr']:g})", str(info["steps"])]
        for dg in digits:
            x = [y for y in cells if y["model"] == c["model"] and y["spec"] == spec and y["params"].get("digits") == dg]
            if not x:
                row.append("–")
                continue
            da = x[0]["metrics"].get("digit_acc", {}).get("mean")
            row.append(f"{_fmt(x[0]['accuracy'], x[0]['ci_low'], x[0]['ci_high'])}; digits {da:.2f}" if da is not None
                       else _fmt(x[0]["accuracy"], x[0]["ci_low"], x[0]["ci_high"]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Whole-number accuracy [95 % CI]; `digits`: per-digit accuracy (teacher-forced)."]
    return lines


if __name__ == "__main__":
    main()
