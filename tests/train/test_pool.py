"""Fixed training sets (evalkit/trainpool.py, ``pool: N``): deterministic, cached and shared on
disk, disjoint from the held-out samples, parallel builds equal serial ones, and the trainer trains
from them reproducibly; ``pool`` stays out of older recipes' hashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testutil import write
from evalkit.runner import make_sample, plan, render
from evalkit.spec import load_model_spec, load_task_spec
from evalkit.train import TrainConfig, TrainError, _cfg_dict, read_log, recipe_hash, train
from evalkit.trainpool import build_pool, pool_key

AR = """\
task: assoc_recall
filler: random
lengths: [32]
samples: 16
seed: 3
params: {num_pairs: [2, 4], placement: uniform}
"""


@pytest.fixture
def specs(tmp_path: Path) -> tuple:
    m = write(tmp_path / "m.yaml", "name: dbg\nkind: native\narch: {flavor: debug, attention_fraction: 0.5}\n")
    t = write(tmp_path / "ar.yaml", AR)
    return load_model_spec(str(m)), [load_task_spec(str(t))]


def test_pool_is_deterministic_cached_and_parallel_equals_serial(specs, tmp_path):
    spec = specs[1][0]
    ids, tgt = build_pool(spec, 0, 32, 600)
    assert ids.shape == tgt.shape == (600, 32) and ids.dtype == np.int16
    assert ((tgt != -100).sum(axis=1) >= 2).all()  # every sample has its answers as targets
    par = build_pool(spec, 0, 32, 600, workers=2, cache_dir=tmp_path / "pools")
    assert np.array_equal(par[0], ids) and np.array_equal(par[1], tgt)
    files = list((tmp_path / "pools").glob("*.npz"))
    assert len(files) == 1 and pool_key(spec, 0, 32, 600) in files[0].name
    # a cached pool is read, not rebuilt: tamper with the file and read the tampered copy back
    np.savez(files[0], ids=ids[:5], tgt=tgt[:5])
    assert build_pool(spec, 0, 32, 600, cache_dir=tmp_path / "pools")[0].shape == (5, 32)
    assert not np.array_equal(build_pool(spec, 1, 32, 600)[0], ids)  # another seed, another pool
    assert pool_key(spec, 0, 32, 600) != pool_key(spec, 0, 32, 601)


def test_pool_never_contains_a_held_out_sample(specs):
    model, [spec] = specs
    ids, _ = build_pool(spec, 0, 32, 2000)
    pool = {tuple(r) for r in ids.tolist()}
    cells = plan([spec], [model])
    held = {tuple(render(c, make_sample(c, i)).input_ids) for c in cells for i in range(spec.samples)}
    assert held and not (held & pool)


def test_trainer_trains_from_a_pool_reproducibly(specs, tmp_path):
    model, tasks = specs
    cfg = TrainConfig(steps=4, batch_tokens=256, lr=1e-2, eval_every=2, eval_samples=4, save_every=2, pool=300)
    a = train(model, tasks, cfg, tmp_path / "a", device="cpu", pool_dir=tmp_path / "pools")
    b = train(model, tasks, cfg, tmp_path / "b", device="cpu", pool_dir=tmp_path / "pools", pool_workers=2)
    assert a.steps == b.steps == 4
    la = [r["loss"] for r in read_log(tmp_path / "a" / "train_log.jsonl") if r["event"] == "train"]
    lb = [r["loss"] for r in read_log(tmp_path / "b" / "train_log.jsonl") if r["event"] == "train"]
    assert la == lb
    start = read_log(tmp_path / "a" / "train_log.jsonl")[0]
    assert start["train_config"]["pool"] == 300


def test_pool_is_outside_older_recipe_hashes_and_validated(specs):
    model, tasks = specs
    assert "pool" not in _cfg_dict(TrainConfig())
    assert recipe_hash(model, tasks, TrainConfig()) != recipe_hash(model, tasks, TrainConfig(pool=10))
    with pytest.raises(TrainError, match="pool"):
        TrainConfig(pool=-1).validate()
