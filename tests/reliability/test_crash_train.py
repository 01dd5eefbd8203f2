"""Crash consistency of `evalkit train`: killed with SIGKILL anywhere, including half-way through
writing ``trainer_state.pt`` or just before renaming it into place, ``--resume`` ends with exactly
the weights of an uninterrupted run (and a state file that is never torn).

The victims are forked warm children (victim.py) running the real CLI with a recipe that saves
the state every 2 steps. Trials: EVALKIT_TRAIN_KILL_TRIALS (default 12: the first 6 kill inside a
save, the rest after a random delay).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from reliability_util import ForkServer, env_int, log_text, write
from safetensors.torch import load_file

TRIALS = env_int("EVALKIT_TRAIN_KILL_TRIALS", 12)
STEPS, SAVE_EVERY = 8, 2


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    model = write(tmp_path / "m.yaml", "name: dbg\nkind: native\narch: {flavor: debug, attention_fraction: 1.0}\n")
    task = write(tmp_path / "n16.yaml", "task: needle\nlengths: [16]\nsamples: 4\nseed: 0\n"
                                        "params: {depth: [0.0, 1.0], key_len: 1, value_len: 1}\n")
    return write(tmp_path / "recipe.yaml", f"model: {model}\ntasks: [{task}]\ntrain:\n  steps: {STEPS}\n"
                                           f"  batch_tokens: 128\n  lr: 0.01\n  eval_every: 100\n  eval_samples: 4\n"
                                           f"  save_every: {SAVE_EVERY}\n  seed: 5\n")


def _argv(recipe: Path, out: Path, resume: bool = False) -> list[str]:
    return ["train", "--recipe", str(recipe), "--out", str(out), "--device", "cpu", *(["--resume"] if resume else [])]


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(recipe: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    n_saves = STEPS // SAVE_EVERY
    with ForkServer(tmp_path, _argv(recipe, tmp_path / "warm")) as server:
        r = server.one(argv=_argv(recipe, tmp_path / "ref"), log=str(tmp_path / "ref.log"))
        assert r["code"] == 0, log_text(tmp_path / "ref.log")
        ref, duration = _weights(tmp_path / "ref"), r["seconds"]
        n_save = min(TRIALS, 2 * n_saves)
        trials = [{"kill_in_save": {"call": 1 + i // 2, "phase": ("write", "replace")[i % 2]}} for i in range(n_save)]
        trials += [{"kill_after": rng.uniform(0, 1.1 * duration)} for _ in range(TRIALS - n_save)]
        killed = 0
        for i, trial in enumerate(trials):
            out, log = tmp_path / f"t{i}", str(tmp_path / f"t{i}.log")
            res = server.one(argv=_argv(recipe, out), log=log, **trial)
            assert res["killed"] or res["code"] == 0, log_text(log)
            killed += res["killed"]
            if (out / "trainer_state.pt").exists():  # whatever survived the kill is a whole state
                state = torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=False)
                assert 0 < state["step"] <= STEPS and state["step"] % SAVE_EVERY == 0
            res = server.one(argv=_argv(recipe, out, resume=True), log=log + ".resume")
            assert res["code"] == 0, log_text(log + ".resume")
            got = _weights(out)
            assert got.keys() == ref.keys()
            assert all(torch.equal(got[k], ref[k]) for k in ref), f"trial {i} ({trial}): weights differ after resume"
    print(f"\n[reliability] kill trials of `evalkit train`: {len(trials)} ({n_save} inside a trainer_state save, "
          f"{len(trials) - n_save} after random delays within {1.1 * duration:.2f} s); {killed} killed before the end")
    assert killed >= len(trials) // 2


class _Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after it runs."""


def test_a_kill_while_resume_rewrites_the_log_never_tears_it(recipe: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming rewrites train_log.jsonl (dropping rows of the lost steps); dying half-way through
    that rewrite must leave a log the next resume can read."""
    from evalkit.spec import load_model_spec, load_task_spec
    from evalkit.train import TrainConfig, load_recipe, read_log, train

    r = load_recipe(recipe)
    model, tasks = load_model_spec(r["model"]), [load_task_spec(t) for t in r["tasks"]]
    cfg = TrainConfig(**{**r["train"], "steps": 4})
    train(model, tasks, cfg, tmp_path / "ref", device="cpu")
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(model, tasks, cfg, out, device="cpu", stop_after=2)
    real = Path.write_text

    def torn_write(self: Path, text: str, *a: object, **k: object) -> int:
        if self.parent == out and self.name.startswith("train_log"):
            real(self, text[: len(text) // 2])
            raise _Killed
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", torn_write)
    with pytest.raises(_Killed):
        train(model, tasks, cfg, out, device="cpu", resume=True)
    monkeypatch.setattr(Path, "write_text", real)
    assert read_log(out / "train_log.jsonl")[0]["event"] == "start"
    train(model, tasks, cfg, out, device="cpu", resume=True)
    got, ref = _weights(out), _weights(tmp_path / "ref")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
