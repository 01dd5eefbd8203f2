"""The training runs behind the reproductions in reports/repro/ (issues 3 and 10).

Each run is one small native model trained with ``evalkit train`` on a task spec of
``experiments/repro/tasks/`` and evaluated with ``evalkit run`` on its evaluation specs. Papers
report the best result over a learning-rate sweep; so do we (``LRS``). ``scripts/repro.py`` turns
these into model specs and recipes, trains them concurrently on one GPU and evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

T = "experiments/repro/tasks/"
LRS = (3e-3, 1e-2)


@dataclass(frozen=True)
class Run:
    exp: str  # experiment: zoology | mamba2 | frontier | fraction | copying
    label: str  # the architecture as the write-up names it (e.g. "mamba2 N=64")
    arch: dict[str, Any]  # NativeConfig fields
    train_tasks: tuple[str, ...]
    eval_tasks: tuple[str, ...]
    lr: float
    time_limit: float  # seconds of training (the schedule follows it)
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)  # other TrainConfig overrides

    @property
    def name(self) -> str:
        d = self.arch["d_model"]
        task = self.train_tasks[0].rsplit("/", 1)[-1].removesuffix(".yaml")
        lab = self.label.replace(" ", "").replace("=", "").replace("/", "-")
        return f"{self.exp}-{lab}-d{d}-{task}-lr{self.lr:g}-s{self.seed}"


def base(d_model: int, pattern: str, **kw: Any) -> dict[str, Any]:
    """Zoology's setting: no MLP, our 512-token vocabulary, head dim 32 everywhere."""
    return {"vocab_size": 512, "d_model": d_model, "n_layers": len(pattern), "pattern": pattern,
            "n_heads": max(1, d_model // 32), "headdim": 32, "d_ff": 0, "chunk_size": 64,
            "max_context": 8192, **kw}


MIXERS = {  # label → (pattern letter, extra arch fields)
    "attention": ("A", {}),
    "mamba": ("m", {"d_state": 16}),
    "mamba2": ("M", {"d_state": 64}),
}


def zoology() -> list[Run]:
    """Zoology Fig. 2: 2 layers, widths 64-256, MQAR (128, 8) and (512, 64)."""
    runs = []
    for label, (letter, extra) in MIXERS.items():
        for d in (64, 128, 256):
            for task, tl in (("mqar_128_8", 60.0), ("mqar_512_64", 120.0)):
                for lr in LRS:
                    runs.append(Run("zoology", label, base(d, letter * 2, **extra), (T + task + ".yaml",),
                                    (T + task + ".yaml",), lr, tl))
    return runs


def mamba2() -> list[Run]:
    """Mamba-2 paper Fig. 8 direction: hard MQAR (T/4 pairs), Mamba-2 N = 16/64/256 vs Mamba N = 16."""
    runs = []
    arches = [("mamba N=16", "m", 16), ("mamba2 N=16", "M", 16), ("mamba2 N=64", "M", 64), ("mamba2 N=256", "M", 256)]
    for label, letter, n in arches:
        for task, tl in (("mqar_256_t4", 90.0), ("mqar_512_t4", 120.0)):
            for lr in LRS:
                runs.append(Run("mamba2", label, base(128, letter * 2, d_state=n), (T + task + ".yaml",),
                                (T + task + ".yaml",), lr, tl))
    return runs


def frontier() -> list[Run]:
    """Based (Arora et al. 2024) recall-vs-state frontier on MQAR (512, 64) at width 128; attention,
    Mamba (N 16) and Mamba-2 (N 64) come from the zoology runs at the same setting."""
    runs = []
    task = T + "mqar_512_64.yaml"
    arches = [("mamba2 N=16", base(128, "MM", d_state=16)), ("mamba2 N=256", base(128, "MM", d_state=256)),
              ("gated_deltanet", base(128, "GG", d_state=32)),
              *[(f"swa w={w}", base(128, "WW", window=w)) for w in (32, 64, 128)]]
    for label, arch in arches:
        for lr in LRS:
            runs.append(Run("frontier", label, arch, (task,), (task,), lr, 120.0))
    return runs


def fraction() -> list[Run]:
    """Attention fraction: an 8-layer Mamba-2 stack (width 128) with 0/1/2/4/8 attention layers,
    dispersed vs stacked at the end, trained on hard MQAR and multi_query (one lr, 3e-3: the GPU
    budget of the first round did not stretch to a sweep of these 8-layer models)."""
    runs = []
    layouts = {"0 attn": "MMMMMMMM", "1 attn dispersed": "MMMMMMMA", "2 attn dispersed": "MMMAMMMA",
               "4 attn dispersed": "MAMAMAMA", "8 attn": "AAAAAAAA", "2 attn stacked": "MMMMMMAA",
               "4 attn stacked": "MMMMAAAA"}
    for label, pat in layouts.items():
        runs.append(Run("fraction", label, base(128, pat, d_state=64),
                        (T + "mqar_512_t4.yaml", T + "multi_query_train.yaml"),
                        (T + "mqar_512_t4.yaml", T + "multi_query_eval.yaml"), 3e-3, 180.0,
                        train={"max_length": 1024, "curriculum": 0.3}))
    return runs


def copying() -> list[Run]:
    """Jelassi et al. 2024 direction: train copying up to 50 digits, test up to 200."""
    runs = []
    for label, pat, extra in (("transformer", "AAAA", {}), ("mamba", "mmmm", {"d_state": 16}),
                              ("mamba2", "MMMM", {"d_state": 64})):
        for lr in LRS:
            runs.append(Run("copying", label, base(128, pat, **extra), (T + "copy_train.yaml",),
                            (T + "copy_test.yaml",), lr, 120.0))
    return runs


def long() -> list[Run]:
    """Round 2: the runs whose first round ended still on the plateau, given 4 minutes each with
    fewer runs sharing the GPU (more steps per run), at the better learning rate of round 1."""
    z = T + "mqar_128_8.yaml"
    runs = [Run("long", label, base(d, letter * 2, **extra), (z,), (z,), 3e-3, 240.0)
            for label, (letter, extra) in MIXERS.items() if label != "mamba2" for d in (64, 128, 256)]
    h = T + "mqar_256_t4.yaml"
    for label, letter, n in (("mamba N=16", "m", 16), ("mamba2 N=16", "M", 16), ("mamba2 N=64", "M", 64),
                             ("mamba2 N=256", "M", 256)):
        runs.append(Run("long", label, base(128, letter * 2, d_state=n), (h,), (h,), 1e-2, 240.0))
    return runs


def round3() -> list[Run]:
    """Round 3 (after rounds 1-2 showed what this budget can train): the frontier and the attention
    fraction on the T = 256 hard MQAR, where round 2 trained Mamba-2 N >= 64 to 1.0, at round 2's
    lr (1e-2); copying re-evaluated at the training context length too (copy_test_256)."""
    h, runs = T + "mqar_256_t4.yaml", []
    for label, arch in (("attention", base(128, "AA")), ("gated_deltanet", base(128, "GG", d_state=32)),
                        *[(f"swa w={w}", base(128, "WW", window=w)) for w in (32, 64, 128)]):
        runs.append(Run("frontier2", label, arch, (h,), (h,), 1e-2, 240.0))
    layouts = {"0 attn": "MMMMMMMM", "1 attn dispersed": "MMMMMMMA", "2 attn dispersed": "MMMAMMMA",
               "4 attn dispersed": "MAMAMAMA", "8 attn": "AAAAAAAA", "2 attn stacked": "MMMMMMAA",
               "4 attn stacked": "MMMMAAAA"}
    for label, pat in layouts.items():
        runs.append(Run("fraction2", label, base(128, pat, d_state=64), (h, T + "multi_query_train.yaml"),
                        (h, T + "multi_query_eval.yaml"), 1e-2, 300.0, train={"max_length": 1024, "curriculum": 0.3}))
    for label, pat, extra, lr in (("transformer", "AAAA", {}, 3e-3), ("mamba", "mmmm", {"d_state": 16}, 1e-2),
                                  ("mamba2", "MMMM", {"d_state": 64}, 1e-2)):
        runs.append(Run("copying2", label, base(128, pat, **extra), (T + "copy_train.yaml",),
                        (T + "copy_test_256.yaml", T + "copy_test.yaml"), lr, 180.0))
    return runs


def attn_long() -> list[Run]:
    """Round 4: can the 2-layer attention-only model leave the MQAR plateau with a longer run? Four
    runs share the GPU (instead of 10-16), for ~6.5 minutes each, on Zoology's (128, 8)."""
    z = T + "mqar_128_8.yaml"
    return [Run("attn_long", "attention", base(d, "AA"), (z,), (z,), lr, 400.0)
            for d, lr in ((64, 1e-3), (128, 1e-3), (256, 1e-3), (128, 3e-3))]


def round5() -> list[Run]:
    """Round 5 (prepared 2026-11-23; ``frontier5`` ran 2026-12-03 on one H200 with ``--time-limit 330``,
    reports/repro/frontier.md; ``zoo5`` not yet run): Zoology's query form
    (``key <pad>``: bare queries, answers hidden; experiments/repro/notes/zoology.md), which the CPU
    runs showed is what lets 2-layer attention leave the plateau (docs/training.md), at Zoology's
    batch (256 sequences a step) and three seeds, since leaving the plateau is seed-dependent.
    ``zoo5``: Zoology Fig. 2 (128, 8) at widths 64-256; ``frontier5``: the Based frontier on the
    T = 256, 64-pair MQAR (attention, Mamba-2 N 16/64/256, Gated DeltaNet, SWA windows 32-128)."""
    z, h, runs = T + "mqar_128_8_zoo.yaml", T + "mqar_256_t4_zoo.yaml", []
    big = {"batch_tokens": 256 * 128, "eval_every": 250, "warmup": 0.0, "weight_decay": 0.01}
    for label, (letter, extra) in MIXERS.items():
        for d in (64, 128, 256):
            for seed in (0, 1, 2):
                runs.append(Run("zoo5", label, base(d, letter * 2, **extra), (z,), (z,), 3e-3, 300.0, seed, big))
    wide = {**big, "batch_tokens": 256 * 256}
    for label, arch, lr in (("attention", base(128, "AA"), 3e-3), ("mamba2 N=16", base(128, "MM", d_state=16), 1e-2),
                            ("mamba2 N=64", base(128, "MM", d_state=64), 1e-2),
                            ("mamba2 N=256", base(128, "MM", d_state=256), 1e-2),
                            ("gated_deltanet", base(128, "GG", d_state=32), 3e-3),
                            *[(f"swa w={w}", base(128, "WW", window=w), 3e-3) for w in (32, 64, 128)]):
        for seed in (0, 1, 2):
            runs.append(Run("frontier5", label, arch, (h,), (h,), lr, 400.0, seed, wide))
    return runs


EXPERIMENTS = {"zoology": zoology, "mamba2": mamba2, "frontier": frontier, "fraction": fraction,
               "copying": copying, "long": long, "attn_long": attn_long,
               "frontier2": lambda: [r for r in round3() if r.exp == "frontier2"],
               "fraction2": lambda: [r for r in round3() if r.exp == "fraction2"],
               "copying2": lambda: [r for r in round3() if r.exp == "copying2"],
               "zoo5": lambda: [r for r in round5() if r.exp == "zoo5"],
               "frontier5": lambda: [r for r in round5() if r.exp == "frontier5"]}


def runs(names: list[str] | None = None) -> list[Run]:
    out: list[Run] = []
    for n in names or list(EXPERIMENTS):
        out += EXPERIMENTS[n]()
    return out
