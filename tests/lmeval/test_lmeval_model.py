"""evalkit's native models inside lm-eval (``--model evalkit``): every request type against a
direct computation with the model, and the refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from evalkit.errors import EvalkitError


@pytest.fixture(scope="module")
def lm(native_text_ckpt: Path) -> Any:
    from evalkit.lmeval.model import EvalkitLM

    return EvalkitLM(model=str(native_text_ckpt), device="cpu", batch_size=3)


def _inst(kind: str, args: tuple) -> Any:
    from lm_eval.api.instance import Instance

    return Instance(kind, {}, args, 0)


def _logprobs(lm: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(lm.net(torch.tensor([ids])).double(), -1)[0]  # (L, V)


def test_registered_under_evalkit() -> None:
    from lm_eval.api.registry import get_model

    import evalkit.lmeval.model as m

    assert get_model("evalkit") is m.EvalkitLM


def test_loglikelihood_matches_a_full_forward_pass(lm: Any, tokenizer: Any) -> None:
    """Batched with right padding (lengths differ) == one unpadded forward pass per request."""
    pairs = [("The grass is", " green."), ("One of the special magic numbers for cactus is:", " 1234567"),
             ("What", " is the special magic number for apple-anchor mentioned in the provided text?"),
             ("Here we go.", " There")]
    got = lm.loglikelihood([_inst("loglikelihood", p) for p in pairs])
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        whole, n_ctx = lm.tok_encode(ctx + cont), len(lm.tok_encode(ctx))
        lp = _logprobs(lm, whole)
        pos = torch.arange(n_ctx - 1, len(whole) - 1)
        target = torch.tensor(whole[n_ctx:])
        assert ll == pytest.approx(float(lp[pos, target].sum()), abs=1e-3)
        assert greedy == bool((lp[pos].argmax(-1) == target).all())


def test_is_greedy_true_for_the_models_own_continuation(lm: Any) -> None:
    ids = lm.tok_encode("The sky is")
    new = lm.net.generate_greedy(torch.tensor([ids]), 4)[0].tolist()
    [(ll, greedy)] = lm._loglikelihood_tokens([(("", ""), ids, new)], disable_tqdm=True)
    assert greedy and ll < 0
    other = [(new[0] + 1) % len(lm.tokenizer)] + new[1:]
    [(ll2, greedy2)] = lm._loglikelihood_tokens([(("", ""), ids, other)], disable_tqdm=True)
    assert not greedy2 and ll2 < ll


def test_generate_until_is_greedy_decoding_and_stops(lm: Any) -> None:
    prompts = ["The grass is", "The sky is", "The grass is green. The sky"]
    reqs = [_inst("generate_until", (p, {"until": [], "max_gen_toks": 6})) for p in prompts]
    got = lm.generate_until(reqs)
    for p, text in zip(prompts, got):
        new = lm.net.generate_greedy(torch.tensor([lm.tok_encode(p)]), 6)[0].tolist()
        eos = lm.tokenizer.eos_token_id
        want = lm.tok_decode(new[: new.index(eos)] if eos in new else new)
        assert text == want
    # a stop string cuts the text before it
    full = got[0]
    if len(full.strip()) > 2:
        stop = full.strip()[1]
        [cut] = lm.generate_until([_inst("generate_until", (prompts[0], {"until": [stop], "max_gen_toks": 6}))])
        assert cut == full.split(stop)[0]


def test_generate_refuses_sampling(lm: Any) -> None:
    with pytest.raises(EvalkitError, match="greedily"):
        lm.generate_until([_inst("generate_until", ("Hi", {"do_sample": True, "temperature": 0.7}))])


def test_loglikelihood_rolling_is_the_sum_over_every_token(lm: Any) -> None:
    text = "The grass is green. The sky is blue."
    [got] = lm.loglikelihood_rolling([_inst("loglikelihood_rolling", (text,))])
    ids = [lm.eot_token_id] + lm.tok_encode(text)
    lp = _logprobs(lm, ids)
    want = float(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    assert got == pytest.approx(want, abs=1e-3)


def test_too_long_is_an_error_not_a_truncation(lm: Any) -> None:
    from evalkit.errors import ContextLengthError

    with pytest.raises(ContextLengthError, match="max_context 512"):
        lm.loglikelihood([_inst("loglikelihood", ("green " * 600, " sky"))])


def test_native_checkpoint_without_tokenizer_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    from lmeval_tiny import save_native

    from evalkit.lmeval.model import EvalkitLM

    ckpt = save_native(tmp_path / "no_tok", len(tokenizer), None)
    with pytest.raises(EvalkitError, match="carries no tokenizer"):
        EvalkitLM(model=str(ckpt), device="cpu")


def test_tokenizer_larger_than_the_vocab_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    from lmeval_tiny import save_native

    from evalkit.lmeval.model import EvalkitLM

    ckpt = save_native(tmp_path / "small_vocab", 256, tokenizer)
    with pytest.raises(EvalkitError, match="vocab_size 256"):
        EvalkitLM(model=str(ckpt), device="cpu")


def test_hf_checkpoint_is_sent_to_lm_evals_own_backend(llama_ckpt: Path) -> None:
    from evalkit.lmeval.model import EvalkitLM

    with pytest.raises(EvalkitError, match="--model hf"):
        EvalkitLM(model=f"hf:{llama_ckpt}", device="cpu")


def test_command_line_wrapper_exits_2_on_bad_input(tmp_path: Path, tokenizer: Any,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m evalkit.lmeval ...``: an EvalkitError raised while lm-eval builds the model (here
    a tokenizer-less checkpoint, created through lm-eval's registry as its CLI does) is one
    sentence on stderr and exit code 2. (lm-eval's real CLI indexes every task first: too slow here.)"""
    import lm_eval.__main__
    from lm_eval.api.registry import get_model
    from lmeval_tiny import save_native

    from evalkit.lmeval.__main__ import main

    ckpt = save_native(tmp_path / "no_tok", len(tokenizer), None)
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate",
                        lambda: get_model("evalkit").create_from_arg_string(f"model={ckpt},device=cpu"))
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "carries no tokenizer" in capsys.readouterr().err
