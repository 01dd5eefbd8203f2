"""``evalkit export --format lm-eval DIR``: write lm-eval task YAMLs that run evalkit's task specs.

Per task spec NAME: ``evalkit_NAME_L<length>.yaml`` (one task per context length, so lm-eval's
table shows recall per length without folding the length into metric names) and
``evalkit_NAME.yaml`` (a group over them, aggregated weighted by size). The YAMLs hold no samples:
their ``custom_dataset`` (``evalkit.lmeval.tasks.dataset``) builds them at run time with the
evaluated model's tokenizer, so ``lm_eval --include_path DIR --tasks evalkit_needle --model hf
--model_args pretrained=PATH`` evaluates exactly the samples ``evalkit run needle --models
hf:PATH`` does. Built-in specs are referred to by name (the export works after ``pip install``),
others by absolute path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evalkit.errors import EvalkitError

TASK_PREFIX = "evalkit_"
GEN_SLACK = 8  # tokens generated beyond the longest possible answer

_TASK_YAML = """\
# Written by `evalkit export --format lm-eval` (evalkit {version}). The samples are built at run
# time by evalkit from task spec '{ref}' with the evaluated model's own tokenizer (docs/lm-eval.md).
task: {task}
dataset_path: ""
dataset_name: ""
custom_dataset: !function evalkit.lmeval.tasks.dataset
dataset_kwargs:
  evalkit_spec: {ref_yaml}
  evalkit_lengths: [{length}]
  evalkit_samples: {samples}
  evalkit_seed: {seed}
output_type: generate_until
test_split: test
doc_to_text: prompt
doc_to_target: answer
target_delimiter: ""
process_results: !function evalkit.lmeval.tasks.process_results
metric_list:
  - metric: exact_match
    aggregation: !function evalkit.lmeval.tasks.all_queries
    higher_is_better: true
  - metric: query_acc
    aggregation: mean
    higher_is_better: true
  - metric: substring_match
    aggregation: !function evalkit.lmeval.tasks.mean_per_sample
    higher_is_better: true
generation_kwargs:
  until: []
  max_gen_toks: {max_gen}
  do_sample: false
  temperature: 0.0
metadata:
  version: {task_version}
"""

_GROUP_YAML = """\
# Written by `evalkit export --format lm-eval` (evalkit {version}): task spec '{ref}' at every length.
group: {group}
task:
{tasks}
aggregate_metric_list:
  - metric: exact_match
    weight_by_size: true
  - metric: query_acc
    weight_by_size: true
  - metric: substring_match
    weight_by_size: true
metadata:
  version: {task_version}
"""


def _ref(ref: str, path: str) -> str:
    """How the YAML names the spec: the built-in name when it is one, else the absolute path."""
    from evalkit.spec import builtin_dir

    p = Path(path).resolve()
    return p.stem if p.parent == builtin_dir("tasks").resolve() else str(p)


def max_answer_chars(spec: object, lengths: Sequence[int], probes: int = 8) -> int:
    """An upper bound on an answer's length in characters (so in tokens, for byte-level and
    SentencePiece tokenizers on ASCII text), from a few samples of every sweep point."""
    from evalkit.tasks import TASKS
    from evalkit.tasks.base import Query
    from evalkit.tasks.text import resolve_text_options, value_text

    cls = TASKS.get(spec.task)  # type: ignore[attr-defined]
    kind = resolve_text_options(dict(spec.text), spec.filler)["values"]  # type: ignore[attr-defined]
    most = 1
    for point in spec.points():  # type: ignore[attr-defined]
        task = cls(cls.Params(**point))
        for i in range(probes):
            sample = task.sample(max(lengths), np.random.default_rng(i), i)
            for q in (p for p in sample.parts if isinstance(p, Query)):
                most = max(most, len(value_text(q.answer, q.space, kind)) + 1)
    return most


def export_lm_eval(out_dir: str | Path, specs: Sequence[str] = (), lengths: Sequence[int] | None = None,
                   samples: int | None = None, seed: int | None = None) -> list[Path]:
    """Write the task and group YAMLs for ``specs`` (default: every built-in task spec) into
    ``out_dir``; return the files written."""
    from evalkit import __version__
    from evalkit.spec import builtin_names, load_task_spec
    from evalkit.tasks import TASKS

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvalkitError(f"{out}: exists and is not a directory (export --format lm-eval writes task files into DIR)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for ref in specs or builtin_names("tasks"):
        spec = load_task_spec(ref)
        if spec.format not in (None, "text"):
            raise EvalkitError(f"{spec.path}: format '{spec.format}' cannot be exported to lm-eval, which feeds "
                               "models text")
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in spec.name)
        use_lengths = sorted(set(lengths or spec.lengths))
        y_ref = _ref(ref, spec.path)
        common = {"version": __version__, "ref": y_ref, "ref_yaml": _yaml_str(y_ref),
                  "samples": samples or spec.samples, "seed": spec.seed if seed is None else seed,
                  "max_gen": max_answer_chars(spec, use_lengths) + GEN_SLACK, "task_version": TASKS.get(spec.task).version}
        tasks = []
        for length in use_lengths:
            task = f"{TASK_PREFIX}{name}_L{length}"
            tasks.append(task)
            path = out / f"{task}.yaml"
            path.write_text(_TASK_YAML.format(task=task, length=length, **common))
            written.append(path)
        group = out / f"{TASK_PREFIX}{name}.yaml"
        group.write_text(_GROUP_YAML.format(group=f"{TASK_PREFIX}{name}", tasks="\n".join(f"  - {t}" for t in tasks),
                                            **common))
        written.append(group)
    return written


def _yaml_str(s: str) -> str:
    """A YAML scalar that reads back as the string ``s``."""
    import json

    return json.dumps(s)
