"""evalkit's task specs as lm-eval tasks: the exported YAMLs and the functions they call.

``evalkit export --format lm-eval DIR`` writes, per task spec, one lm-eval task per context
length (``evalkit_needle_L1024``) and a group (``evalkit_needle``) over them. Each task's
``custom_dataset`` is ``evalkit.lmeval.tasks.dataset``: it builds the very samples ``evalkit run
SPEC --models hf:PATH`` evaluates — the same plan (sample key with the spec, the resolved text
options and the tokenizer identity), the same seeds, the same ``text`` rendering in the model's own
tokenizer — so the two harnesses see identical prompts, token for token.

One lm-eval document per (sample, query): its prompt is the exact text before that query's
answer (later queries see the earlier *gold* answers, as teacher forcing does), and the model
generates greedily. Metrics (``process_results`` + the aggregations below):

- ``exact_match``: evalkit's primary metric — a sample is right when every one of its answers is
  generated exactly (the continuation, leading spaces aside, starts with the gold answer);
  aggregated per sample, then averaged. For a whole answer this equals teacher-forced exact match.
- ``query_acc``: the fraction of queries answered exactly (per query, like evalkit's secondary).
- ``substring_match``: RULER's ``string_match_all``: the gold answer occurs anywhere in the
  continuation; per-sample mean over its queries, then averaged.

The prompt text is checked to tokenise back to evalkit's ids; a tokenizer for which it does not
is refused, rather than evaluated on a prompt that differs from evalkit's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import ContextLengthError, EvalkitError


# --------------------------------------------------------------------------- building samples
@dataclass(frozen=True)
class Doc:
    """One lm-eval document: one query of one evalkit sample."""

    sample_uid: str
    index: int
    query: int
    n_queries: int
    context_length: int
    length: int
    prompt: str
    answer: str
    axes: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def tokenizer_model_spec(tokenizer_dir: str) -> Any:
    """The model spec ``evalkit run --models hf:DIR`` would plan with, as far as samples go
    (kind ``hf``, default options): its tokenizer and render options decide the samples."""
    from evalkit.spec import ModelSpec

    return ModelSpec(name=Path(tokenizer_dir).name, kind="hf", path=None, arch=(),
                     checkpoint=str(Path(tokenizer_dir).resolve()), init_seed=0)


def build_docs(spec_ref: str, tokenizer_dir: str, lengths: Sequence[int], samples: int, seed: int) -> list[Doc]:
    """Every document of ``spec_ref`` at ``lengths``, rendered with the tokenizer in ``tokenizer_dir``."""
    from evalkit.models.base import ADAPTERS
    from evalkit.runner import Cell, _render_options, _sample_key, make_sample, render
    from evalkit.spec import load_task_spec
    from evalkit.tasks.base import OverLengthError

    spec = load_task_spec(spec_ref)
    if spec.format not in (None, "text"):
        raise EvalkitError(f"{spec.path}: format '{spec.format}' cannot run in lm-eval, which feeds models text "
                           "(use format: text, or leave format unset)")
    model = tokenizer_model_spec(tokenizer_dir)
    adapter = ADAPTERS.get("hf")
    tok_id = adapter.tokenizer_identity(model)
    if tok_id is None:
        raise EvalkitError(f"{tokenizer_dir}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)")
    tokenizer = adapter.load_tokenizer(model)
    opts = _render_options(spec, "text", adapter, model)
    docs: list[Doc] = []
    for length in lengths:
        for point in spec.points():
            skey = _sample_key(spec, point, "text", length, seed, opts, tok_id)
            axes = tuple((a, point[a]) for a, _ in spec.sweep)
            cell = Cell(spec, model, "lm-eval", tuple(sorted(point.items())), axes, length, "text", seed, samples,
                        "greedy", skey, skey, tuple(sorted(opts.items())), tok_id)
            for i in range(samples):
                try:
                    r = render(cell, make_sample(cell, i))
                except OverLengthError as e:
                    if cell.overlength == "skip":
                        continue
                    raise ContextLengthError(f"{spec.path}: {cell.label}: {e}") from None
                docs += _docs_of(r, tokenizer, f"{skey}:{i}", i, length, axes)
    return docs


def _docs_of(r: Any, tokenizer: Any, uid: str, index: int, length: int, axes: tuple) -> list[Doc]:
    """One document per answer span of a rendered sample, each prompt checked against the ids."""
    from evalkit.tasks.text import text_tokenizer

    out = []
    prefix = len(text_tokenizer(tokenizer).prefix)  # the BOS the tokenizer adds itself
    for q, ((start, _), answer) in enumerate(zip(r.answer_spans, r.answers_text)):
        if q == 0:
            prompt = r.prompt_text
        else:
            prompt = tokenizer.decode(list(r.input_ids[prefix:start]), skip_special_tokens=False)
        if list(tokenizer(prompt)["input_ids"]) != list(r.input_ids[:start]):
            name = getattr(tokenizer, "name_or_path", "this tokenizer")
            raise EvalkitError(f"tokenizer '{name}' does not tokenise the prompt text of query {q} back to evalkit's "
                               "token ids, so lm-eval would evaluate a different prompt than evalkit")
        out.append(Doc(uid, index, q, len(r.answer_spans), length, len(r.input_ids), prompt, answer,
                       " ".join(f"{k}={v}" for k, v in axes)))
    return out


# --------------------------------------------------------------------------- lm-eval hooks
def dataset(**kwargs: Any) -> dict[str, Any]:
    """lm-eval ``custom_dataset``: ``kwargs`` are the model arguments and ``--metadata`` (lm-eval
    merges them) plus the task's ``dataset_kwargs`` (``evalkit_spec``, ``evalkit_lengths``,
    ``evalkit_samples``, ``evalkit_seed``). ``--metadata '{"samples": 20, "seed": 1}'`` overrides
    the exported defaults."""
    import datasets

    from evalkit.lmeval.tokenizer import tokenizer_ref

    docs = build_docs(str(kwargs["evalkit_spec"]), tokenizer_ref(kwargs), [int(x) for x in kwargs["evalkit_lengths"]],
                      int(kwargs.get("samples", kwargs["evalkit_samples"])),
                      int(kwargs.get("seed", kwargs["evalkit_seed"])))
    return {"test": datasets.Dataset.from_list([d.to_dict() for d in docs], split=datasets.Split.TEST)}


def exact(continuation: str, answer: str) -> bool:
    """Greedy generation got the answer exactly: the continuation (leading spaces aside, which
    some tokenizers drop when decoding a continuation alone) starts with it."""
    return continuation.lstrip(" ").startswith(answer)


def substring(continuation: str, answer: str) -> bool:
    """RULER's match: the answer occurs anywhere in the (stripped) continuation, case-insensitively."""
    return answer.lower() in continuation.strip().lower()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    cont = results[0]
    uid = doc["sample_uid"]
    return {"exact_match": (uid, exact(cont, doc["answer"])), "query_acc": float(exact(cont, doc["answer"])),
            "substring_match": (uid, substring(cont, doc["answer"]))}


def all_queries(items: list[tuple[str, bool]]) -> float:
    """Share of samples whose every query is right (evalkit's whole-answer exact match)."""
    by_sample: dict[str, bool] = {}
    for uid, ok in items:
        by_sample[uid] = by_sample.get(uid, True) and bool(ok)
    return sum(by_sample.values()) / len(by_sample) if by_sample else float("nan")


def mean_per_sample(items: list[tuple[str, bool]]) -> float:
    """Mean over samples of the share of a sample's queries that are right (RULER's string_match_all)."""
    by_sample: dict[str, list[bool]] = {}
    for uid, ok in items:
        by_sample.setdefault(uid, []).append(bool(ok))
    return sum(sum(v) / len(v) for v in by_sample.values()) / len(by_sample) if by_sample else float("nan")
