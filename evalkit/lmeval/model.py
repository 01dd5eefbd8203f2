"""evalkit's native models as an lm-eval model: ``--model evalkit --model_args model=REF``.

REF is anything ``evalkit run --models`` takes for a native model (a built-in name, a model spec,
a checkpoint directory). lm-eval speaks text, so the model must carry a tokenizer (see
``evalkit.lmeval.tokenizer``); a native model trained on the synthetic ``tokens`` format has none
and is refused with a clear error.

The three request types:

- ``loglikelihood``: one forward pass per batch; sequences are right-padded (the models are
  causal, so padding after a sequence never changes its logits: safe for attention *and* for
  the recurrent SSM state) and only continuation positions go through the output head.
- ``generate_until``: greedy only. Prompts are grouped by exact token length, so no padding ever
  enters an SSM state; prefill once, then the recurrent ``step`` per token, stopping each row at
  EOS or a stop string.
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows, scored like ``loglikelihood``.

Nothing is truncated silently: a context longer than the model's ``max_context`` is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalkit.errors import ContextLengthError, EvalkitError
from evalkit.lmeval import require_lm_eval

require_lm_eval()

# lm-eval fills its model registry lazily, and only while it is empty: registering ours into an
# empty registry would hide `hf` and the rest from every later lookup in this process
import lm_eval.models  # noqa: F401
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from evalkit.lmeval.tokenizer import load_tokenizer, native_tokenizer_path, no_tokenizer_message

MODEL_NAME = "evalkit"


@register_model(MODEL_NAME)
class EvalkitLM(TemplateLM):
    """A native evalkit model behind lm-eval's ``LM`` interface (greedy, batched, CPU or CUDA)."""

    def __init__(self, model: str, tokenizer: str | None = None, device: str = "auto",
                 batch_size: int | str = 8, max_gen_toks: int = 256, **_: Any) -> None:
        super().__init__()
        from evalkit.models.base import ADAPTERS
        from evalkit.runner import resolve_device
        from evalkit.spec import load_model_spec

        spec = load_model_spec(str(model))
        if spec.kind != "native":
            raise EvalkitError(f"lm-eval model '{MODEL_NAME}' runs evalkit's native models, but '{model}' is a "
                               f"'{spec.kind}' model; use lm-eval's own backend for it (e.g. --model hf)")
        tok_path = tokenizer or native_tokenizer_path(spec)
        if tok_path is None:
            raise EvalkitError(no_tokenizer_message(spec))
        self.tokenizer = load_tokenizer(str(tok_path))
        self.tokenizer_path = str(tok_path)
        adapter_cls = ADAPTERS.get("native")
        vocab = adapter_cls.config(spec).vocab_size
        if len(self.tokenizer) > vocab:
            raise EvalkitError(f"tokenizer {tok_path} has {len(self.tokenizer)} tokens but native model '{spec.name}' "
                               f"has vocab_size {vocab}: they do not belong together")
        adapter_cls.check(spec)
        self._device = resolve_device(str(device))
        self.adapter = adapter_cls(spec, self._device)
        self.net = self.adapter.model
        self.spec = spec
        self.max_length = int(self.net.cfg.max_context)
        self.batch_size = 8 if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self.max_gen_toks = int(max_gen_toks)

    # --- tokenization ------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise EvalkitError(f"tokenizer {self.tokenizer_path} has no EOS token, which lm-eval uses as the "
                               "prefix of empty contexts")
        return int(eos)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return list(self.tokenizer.encode(string, **kw))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)

    # --- scoring -----------------------------------------------------------------------------
    def _check_fits(self, n: int, what: str) -> None:
        if n > self.max_length:
            raise ContextLengthError(f"{what} of {n} tokens is longer than native model '{self.spec.name}' accepts "
                                     f"(max_context {self.max_length}); evalkit never truncates silently")

    def _score(self, ctx: list[int], cont: list[int]) -> tuple[list[int], int, list[int]]:
        """(input ids, position whose logits predict the first continuation token, continuation)."""
        seq = (ctx + cont)[:-1]  # the last token is only ever a target
        self._check_fits(len(seq), "context + continuation")
        return seq, len(ctx) - 1, cont

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        items = [self._score(ctx, cont) for _, ctx, cont in requests]
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))  # longest first: batches pad little
        out: list[tuple[float, bool] | None] = [None] * len(items)
        bar = tqdm(total=len(items), disable=disable_tqdm, desc="evalkit loglikelihood")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = len(items[idx[0]][0])
            ids = torch.zeros(len(idx), width, dtype=torch.long)  # (B, L) right-padded
            for b, i in enumerate(idx):
                seq = items[i][0]
                ids[b, :len(seq)] = torch.tensor(seq)
            with torch.inference_mode():
                h = self.net.hidden(ids.to(self._device))  # (B, L, D)
                for b, i in enumerate(idx):
                    _, first, cont = items[i]
                    logp = torch.log_softmax(self.net.head(h[b, first:first + len(cont)]).float(), -1)  # (n, V)
                    target = torch.tensor(cont, device=logp.device)  # (n,)
                    ll = float(logp.gather(-1, target[:, None]).sum())
                    greedy = bool((logp.argmax(-1) == target).all())
                    out[i] = (ll, greedy)
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], (ll, greedy))
            bar.update(len(idx))
        bar.close()
        return [o for o in out if o is not None]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="evalkit loglikelihood_rolling"):
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scored = self._loglikelihood_tokens([(("", ""), c, t) for c, t in windows], disable_tqdm=True)
            total = sum(ll for ll, _ in scored)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    # --- generation --------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        prepared = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise EvalkitError(f"lm-eval model '{MODEL_NAME}' decodes greedily only; the task asks for "
                                   f"sampling ({ {k: kwargs[k] for k in ('do_sample', 'temperature') if k in kwargs} })")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self.tok_encode(context)
            self._check_fits(len(ids), "prompt")
            max_new = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - len(ids) + 1)
            prepared.append((ids, until, max_new))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (ids, _, max_new) in enumerate(prepared):
            groups.setdefault((len(ids), max_new), []).append(i)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="evalkit generate_until")
        for (_, max_new), members in sorted(groups.items(), reverse=True):
            for start in range(0, len(members), self.batch_size):
                idx = members[start:start + self.batch_size]
                texts = self._generate([prepared[i][0] for i in idx], [prepared[i][1] for i in idx], max_new)
                for i, text in zip(idx, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(idx))
        bar.close()
        return out

    def _generate(self, prompts: list[list[int]], untils: list[list[str]], max_new: int) -> list[str]:
        """Greedy decode of equal-length prompts; each row stops at EOS or its first stop string."""
        eos = self.tokenizer.eos_token_id
        ids = torch.tensor(prompts, dtype=torch.long, device=self._device)  # (B, L)
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        with torch.inference_mode():
            logits, state = self.net.prefill(ids)  # (B, V)
            for step in range(max_new):
                token = logits.argmax(-1)  # (B,)
                for b, t in enumerate(token.tolist()):
                    if done[b]:
                        continue
                    if t == eos:
                        done[b] = True
                        continue
                    new[b].append(t)
                    if untils[b] and any(s in self.tok_decode(new[b]) for s in untils[b]):
                        done[b] = True
                if all(done) or step + 1 == max_new:
                    break
                logits, state = self.net.step(token, state)
        texts = []
        for b, toks in enumerate(new):
            text = self.tok_decode(toks)
            for s in untils[b]:
                if s:
                    text = text.split(s)[0]
            texts.append(text)
        return texts
