"""YAML → frozen, validated specs. Strict at the edge: every error names file, line and field.

Task spec (``tasks/needle.yaml``)::

    task: needle            # plugin name (required)
    name: needle            # optional; defaults to the file's stem
    format: tokens          # optional; default: the adapter's default format
    filler: random          # haystack kind of the tokens format: random | repeat | constant
    answers: shown          # tokens format: shown (<q> key <a> value) | hidden (<q> key <a> <pad>;
                            # the value is only a target, as in Zoology's MQAR)
    queries: tagged         # tokens format: tagged (<q> key <a> value) | bare (key value, Zoology)
    text:                   # options of the text format (docs/text-format.md); all optional
      haystack: auto        # auto (from filler) | noise | words | constant
      values: numbers       # numbers | uuids | words
      overlength: error     # error | skip (counted) when the fixed text alone is too long
    lengths: [256, 1024]    # context lengths (tokens of the rendered sequence)
    samples: 20             # samples per cell
    seed: 0
    params:                 # the plugin's Params; a list on a sweep axis sweeps it
      depth: [0.0, 0.5, 1.0]

Model spec (``models/hybrid.yaml``)::

    name: hybrid
    kind: native            # adapter
    arch: {flavor: small, ssm: mamba2, attention_fraction: 0.25}
    checkpoint: null        # path (relative to the spec) to a directory or .safetensors file
    init_seed: 0            # seeds the random init when there is no checkpoint
    options: {}             # adapter options, e.g. for kind: hf {dtype: bfloat16, chat_template: true}

A model spec may sweep its architecture and carry its own training recipe (docs/training.md,
"Sweeps that train")::

    arch: {flavor: small, n_layers: 8, attention_fraction: [0, 0.125, 0.25, 0.5, 1.0]}
    train:                  # evalkit run ... --train-missing trains each variant (evalkit/sweeps.py)
      tasks: [assoc_recall] # built-in names or paths relative to this file
      steps: 400            # any other TrainConfig field (evalkit/train.py), as in a recipe's train:

A list under ``arch`` is *one value* when the adapter accepts it as one (``pattern: [mamba2,
attention]``, ``attn_layer_idx: [1, 3]``: every existing spec keeps its meaning); otherwise it
sweeps that field, and several such lists sweep their cartesian product. Each combination is a
variant named ``NAME[field=value,...]`` (``load_model_specs``). A field whose one value is itself
a list (the adapter's ``list_fields``) is swept by a list of lists (``attn_layer_idx: [[1], [1,
3]]``) or by scalars that are each a valid value (``pattern: [MMMA, MAMA]``); a list that is
neither is reported as the one (invalid) value it then must be.

``--models hf:PATH`` (or a checkpoint directory whose config.json has a ``model_type``) is a
``kind: hf`` spec of that transformers checkpoint; ``--models vllm:PATH`` the ``kind: vllm`` spec
of it (served by vLLM).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evalkit.errors import SpecError, UnknownNameError
from evalkit.registry import closest, did_you_mean

FILLERS = ("random", "repeat", "constant")


# --------------------------------------------------------------------------- YAML with lines
class _Doc:
    """A parsed YAML document plus the node tree, to find the line of any field path."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        try:
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SpecError(f"{where}: malformed YAML: {problem}") from None
        except RecursionError:
            raise SpecError(f"{path}: malformed YAML: nested too deeply") from None
        self._check_duplicates(self.node)

    MAX_NODES = 100_000  # a spec is small; more means aliases that refer to themselves or explode

    def _check_duplicates(self, root: Any) -> None:
        """Refuse duplicate keys, walking the node tree with aliases expanded (iteratively, and at
        most MAX_NODES nodes: a recursive or exponential alias is refused, not followed forever)."""
        stack, visited = [root], 0
        while stack:
            node = stack.pop()
            visited += 1
            if visited > self.MAX_NODES:
                raise SpecError(f"{self.path}: YAML aliases expand to more than {self.MAX_NODES} values "
                                "(an alias that refers to itself, or aliases of aliases)")
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for k, v in node.value:
                    if k.value in seen:
                        raise SpecError(f"{self.path}:{k.start_mark.line + 1}: duplicate field '{k.value}'")
                    if isinstance(k.value, str):
                        seen.add(k.value)
                    stack += [k, v]
            elif isinstance(node, yaml.SequenceNode):
                stack += node.value

    def line(self, *fields: str | int) -> int | None:
        node = self.node
        line = node.start_mark.line + 1 if node is not None else None
        for f in fields:
            if isinstance(node, yaml.MappingNode):
                nxt = next(((k, v) for k, v in node.value if k.value == f), None)
                if nxt is None:
                    return line
                line, node = nxt[0].start_mark.line + 1, nxt[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(f, int) and f < len(node.value):
                node = node.value[f]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, fields: tuple[str | int, ...], msg: str) -> SpecError:
        line = self.line(*fields)
        where = f"{self.path}:{line}" if line else self.path
        name = ".".join(str(f) for f in fields)
        text = f"{where}: field '{name}': {msg}" if name else f"{where}: {msg}"
        # a key or value with a newline or control character stays one line, escaped
        return SpecError("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


def _read(path: Path) -> _Doc:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec: {e.strerror}") from None
    doc = _Doc(str(path), text)
    if not isinstance(doc.data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(doc.data).__name__}")
    return doc


def _check_keys(doc: _Doc, data: Mapping[str, Any], allowed: tuple[str, ...], prefix: tuple[str, ...] = ()) -> None:
    for key in data:
        if key not in allowed:
            best = closest(str(key), allowed)
            hint = f"did you mean '{best}'? " if best else ""
            raise doc.error((*prefix, key), f"unknown field; {hint}(expected one of: {', '.join(allowed)})")


def _typed(doc: _Doc, fields: tuple[str | int, ...], value: Any, typ: type | tuple[type, ...], what: str) -> Any:
    ok = isinstance(value, typ) and not (isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)))
    if not ok:
        raise doc.error(fields, f"expected {what}, got {value!r}")
    return value


# --------------------------------------------------------------------------- built-in specs
def builtin_dir(kind: str) -> Path:
    """Directory of the built-in ``tasks`` or ``models``: package data when installed from a
    wheel, the repo's own top-level folder in a source checkout (the same files)."""
    import evalkit

    pkg = Path(evalkit.__file__).resolve().parent
    installed = pkg / "_builtin" / kind
    return installed if installed.is_dir() else pkg.parent / kind


def builtin_names(kind: str) -> list[str]:
    d = builtin_dir(kind)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _resolve_path(ref: str, kind: str) -> Path:
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in ref:
        if not p.exists():
            raise UnknownNameError(f"{kind} spec '{ref}' does not exist")
        return p
    candidate = builtin_dir(kind) / f"{ref}.yaml"
    if candidate.exists():
        return candidate
    noun = "task" if kind == "tasks" else "model"
    raise UnknownNameError(f"unknown {noun} '{ref}'{did_you_mean(ref, builtin_names(kind))}")


# --------------------------------------------------------------------------- task specs
@dataclass(frozen=True)
class TaskSpec:
    """A validated task spec: which plugin, which formats/lengths/samples, fixed params and sweeps."""

    name: str
    task: str
    path: str
    format: str | None
    filler: str
    lengths: tuple[int, ...]
    samples: int
    seed: int
    params: tuple[tuple[str, Any], ...]  # fixed (non-swept) params, sorted
    sweep: tuple[tuple[str, tuple[Any, ...]], ...]  # axis → values, in Params order
    text: tuple[tuple[str, Any], ...] = ()  # text-format options as given (evalkit.tasks.text)
    answers: str = "shown"  # tokens format: are the answers model input? (evalkit.tasks.tokens)
    queries: str = "tagged"  # tokens format: <q> key <a> answer, or bare key answer

    def token_options(self) -> dict[str, Any]:
        """The tokens format's query options that differ from their defaults (``answers``,
        ``queries``): what the runner, the trainer and the pool cache add to the filler, so that
        specs without them keep their keys and hashes."""
        return {k: v for k, v in (("answers", self.answers), ("queries", self.queries))
                if v != _TOKEN_DEFAULTS[k]}

    def points(self) -> list[dict[str, Any]]:
        """Every combination of swept axis values, merged with the fixed params."""
        names = [a for a, _ in self.sweep]
        out = []
        for combo in itertools.product(*(v for _, v in self.sweep)):
            out.append({**dict(self.params), **dict(zip(names, combo))})
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["params"] = dict(self.params)
        d["sweep"] = {k: list(v) for k, v in self.sweep}
        d["text"] = dict(self.text)
        for k, v in _TOKEN_DEFAULTS.items():  # defaults stay out: older specs keep their hashes
            if d[k] == v:
                del d[k]
        return d


_TOKEN_DEFAULTS = {"answers": "shown", "queries": "tagged"}


_TASK_FIELDS = ("task", "name", "format", "filler", "answers", "queries", "text", "lengths", "samples", "seed", "params", "description")


def load_task_spec(ref: str | Path) -> TaskSpec:
    """Load and validate a task spec from a path or a built-in name (``needle``)."""
    from evalkit.tasks import FORMATS, TASKS
    from evalkit.tasks.tokens import ANSWER_MODES, QUERY_STYLES

    path = _resolve_path(str(ref), "tasks")
    doc = _read(path)
    d = doc.data
    _check_keys(doc, d, _TASK_FIELDS)
    if "task" not in d:
        raise doc.error((), "missing required field 'task' (the task plugin name)")
    task_name = _typed(doc, ("task",), d["task"], str, "a task plugin name")
    if task_name not in TASKS:
        raise doc.error(("task",), f"unknown task '{task_name}'{did_you_mean(task_name, TASKS.names())}")
    cls = TASKS.get(task_name)
    fmt = d.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
        raise doc.error(("format",), f"unknown format '{fmt}'{did_you_mean(str(fmt), FORMATS.names())}")
    filler = d.get("filler", "random")
    if filler not in FILLERS:
        raise doc.error(("filler",), f"unknown filler '{filler}'{did_you_mean(str(filler), FILLERS)}")
    token_opts = {}
    for key, allowed, what in (("answers", ANSWER_MODES, "answers mode"), ("queries", QUERY_STYLES, "query style")):
        value = d.get(key, _TOKEN_DEFAULTS[key])
        if value not in allowed:
            raise doc.error((key,), f"unknown {what} '{value}'{did_you_mean(str(value), allowed)}"
                            f" (expected one of: {', '.join(allowed)})")
        if value != _TOKEN_DEFAULTS[key] and fmt not in (None, "tokens"):
            raise doc.error((key,), f"{key}: {value} needs the tokens format, not '{fmt}'")
        token_opts[key] = value
    lengths = d.get("lengths", [256, 1024])
    if not isinstance(lengths, list) or not lengths:
        raise doc.error(("lengths",), f"expected a non-empty list of positive integers, got {lengths!r}")
    for i, n in enumerate(lengths):
        _typed(doc, ("lengths", i), n, int, "a positive integer")
        if n < 1:
            raise doc.error(("lengths", i), f"expected a positive integer, got {n}")
    samples = _typed(doc, ("samples",), d.get("samples", 20), int, "a positive integer")
    if samples < 1:
        raise doc.error(("samples",), f"expected a positive integer, got {samples}")
    seed = _typed(doc, ("seed",), d.get("seed", 0), int, "an integer")
    params = d.get("params") or {}
    if not isinstance(params, dict):
        raise doc.error(("params",), f"expected a mapping of {task_name} parameters, got {params!r}")
    fixed, sweep = _task_params(doc, cls, params)
    if token_opts["queries"] == "bare":  # key-less queries (copy_number) have no bare form
        import numpy as np

        point = {**dict(fixed), **{k: v[0] for k, v in sweep}}
        probe = cls(cls.Params(**point)).sample(max(lengths), np.random.default_rng(0), 0)
        if any(not q.key for q in probe.queries):
            raise doc.error(("queries",), f"queries: bare needs keyed queries, and task '{task_name}' asks "
                            "key-less ones (<copy> <a> answer); use queries: tagged")
    text = d.get("text") or {}
    if not isinstance(text, dict):
        raise doc.error(("text",), f"expected a mapping of text-format options, got {text!r}")
    from evalkit.tasks.text import TEXT_OPTIONS, check_text_options

    for key, value in text.items():
        try:
            check_text_options({key: value})
        except ValueError as e:
            raise doc.error(("text", key) if key in TEXT_OPTIONS else ("text",), str(e)) from None
    return TaskSpec(
        name=str(d.get("name", path.stem)), task=task_name, path=str(path), format=fmt, filler=filler,
        lengths=tuple(sorted(set(lengths))), samples=samples, seed=seed, params=fixed, sweep=sweep,
        text=tuple(sorted(text.items())), **token_opts,
    )


def _task_params(doc: _Doc, cls: Any, params: dict[str, Any]) -> tuple[tuple, tuple]:
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    _check_keys(doc, params, tuple(fields), ("params",))
    defaults = cls.Params()
    fixed: dict[str, Any] = {}
    sweep: list[tuple[str, tuple[Any, ...]]] = []
    for name in fields:
        default = getattr(defaults, name)
        if name not in params:
            fixed[name] = default
            continue
        value = params[name]
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            if name not in cls.axes:
                raise doc.error(("params", name), f"is not a sweep axis of task '{cls.name}', so it takes one value, not a list (axes: {', '.join(cls.axes) or 'none'})")
            if not value:
                raise doc.error(("params", name), "expected a non-empty list of values")
        for i, v in enumerate(values):
            where = ("params", name, i) if isinstance(value, list) else ("params", name)
            _check_value(doc, where, v, default)
            try:
                cls(dataclasses.replace(defaults, **{name: v})).validate()
            except (ValueError, TypeError) as e:
                # a bound that depends on another field (num_queries <= num_pairs) is judged
                # against the values this spec gives those fields, not their defaults
                ctx = {k: (x[0] if isinstance(x, list) and x else x) for k, x in params.items() if k != name}
                try:
                    cls(dataclasses.replace(defaults, **{**ctx, name: v})).validate()
                except (ValueError, TypeError):
                    raise doc.error(where, str(e)) from None
        if isinstance(value, list):
            sweep.append((name, tuple(values)))
        else:
            fixed[name] = value
    # validate each combination too (e.g. num_queries <= num_needles)
    for combo in itertools.product(*(v for _, v in sweep)):
        p = {**fixed, **dict(zip([a for a, _ in sweep], combo))}
        try:
            cls(cls.Params(**p)).validate()
        except (ValueError, TypeError) as e:
            raise doc.error(("params",), f"invalid combination {p}: {e}") from None
    return tuple(sorted(fixed.items())), tuple(sweep)


def _check_value(doc: _Doc, where: tuple, v: Any, default: Any) -> None:
    if default is None or v is None:
        return
    if isinstance(default, bool):
        ok = isinstance(v, bool)
    elif isinstance(default, int):
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif isinstance(default, float):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    else:
        ok = isinstance(v, type(default))
    if not ok:
        raise doc.error(where, f"expected {type(default).__name__}, got {v!r}")


# --------------------------------------------------------------------------- model specs
@dataclass(frozen=True)
class ModelSpec:
    """A validated model spec. ``arch`` is the adapter's own config mapping (validated by it)."""

    name: str
    kind: str
    path: str | None
    arch: tuple[tuple[str, Any], ...]
    checkpoint: str | None  # absolute path, or None for random init
    init_seed: int
    description: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # adapter options (validated by the adapter)
    sweep: tuple[tuple[str, Any], ...] = ()  # this variant's swept arch values, in spec order
    train: tuple[tuple[str, Any], ...] = ()  # the spec's train: block (TrainConfig values), sorted
    train_tasks: tuple[str, ...] = ()  # its task specs: absolute paths or built-in names

    @property
    def trains(self) -> bool:
        """True when the spec carries a ``train:`` block (its checkpoint is trained and cached)."""
        return bool(self.train_tasks)

    def arch_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dict(self.arch)))

    def options_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dict(self.options)))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arch"] = self.arch_dict()
        d["options"] = self.options_dict()
        for key in ("sweep", "train", "train_tasks"):  # absent unless used: older runs' specs read the same
            if not d[key]:
                del d[key]
            elif key != "train_tasks":
                d[key] = json.loads(json.dumps(dict(getattr(self, key))))
        return d


_MODEL_FIELDS = ("name", "kind", "arch", "checkpoint", "init_seed", "options", "description", "train")


def load_model_spec(ref: str) -> ModelSpec:
    """Resolve a model reference: a built-in name, a spec path, a checkpoint directory, or
    ``hf:PATH`` (a transformers checkpoint directory), or ``vllm:PATH`` (the same, served by vLLM).
    A spec that sweeps its architecture is refused here (it is several models): commands that
    evaluate many models take it through ``load_model_specs``."""
    specs = load_model_specs(ref)
    if len(specs) > 1:
        axes = ", ".join(dict.fromkeys(k for s in specs for k, _ in s.sweep))
        raise SpecError(f"{specs[0].path}: sweeps {axes} ({len(specs)} variants: {specs[0].name}, ...); this "
                        "command takes one model, so give one value per arch field (`evalkit run --models` "
                        "takes the whole sweep)")
    return specs[0]


def load_model_specs(ref: str) -> list[ModelSpec]:
    """Every model a reference stands for: one, or one per combination of a spec's swept arch
    values (module docstring), in the spec's order, each a complete ModelSpec."""
    if ref.startswith("hf:"):
        return [hf_spec(ref[3:])]
    if ref.startswith("vllm:"):
        return [hf_spec(ref[5:], kind="vllm")]
    p = Path(ref)
    if p.is_dir():
        return [_checkpoint_dir_spec(p)]
    path = _resolve_path(ref, "models")
    doc = _read(path)
    d = doc.data
    _check_keys(doc, d, _MODEL_FIELDS)
    from evalkit.models import ADAPTERS

    kind = _typed(doc, ("kind",), d.get("kind", "native"), str, "an adapter name")
    if kind not in ADAPTERS:
        raise doc.error(("kind",), f"unknown adapter '{kind}'{did_you_mean(kind, ADAPTERS.names())}")
    adapter = ADAPTERS.get(kind)
    arch = d.get("arch") or {}
    if not isinstance(arch, dict):
        raise doc.error(("arch",), f"expected a mapping, got {arch!r}")
    points = _arch_points(doc, adapter, arch)
    ckpt = d.get("checkpoint")
    if ckpt is not None:
        _typed(doc, ("checkpoint",), ckpt, str, "a path")
        if len(points) > 1:
            raise doc.error(("checkpoint",), f"one checkpoint cannot hold the {len(points)} architectures this spec "
                            "sweeps; drop 'checkpoint' (and give a train: block to train each variant)")
        if "train" in d:
            raise doc.error(("checkpoint",), "give either 'checkpoint' (trained weights) or 'train' (evalkit "
                            "trains and caches the weights), not both")
        cpath = (path.parent / ckpt).resolve()
        if not cpath.exists():
            raise doc.error(("checkpoint",), f"checkpoint '{cpath}' does not exist")
        ckpt = str(cpath)
    init_seed = _typed(doc, ("init_seed",), d.get("init_seed", 0), int, "an integer")
    options = d.get("options") or {}
    if not isinstance(options, dict):
        raise doc.error(("options",), f"expected a mapping of adapter options, got {options!r}")
    try:
        adapter.validate_options(options)
    except ValueError as e:
        field = _field_in_message(str(e), options)
        raise doc.error(("options", field) if field else ("options",), str(e)) from None
    base = ModelSpec(name=str(d.get("name", path.stem)), kind=kind, path=str(path), arch=(), checkpoint=ckpt,
                     init_seed=init_seed, description=str(d.get("description", "")),
                     options=tuple(sorted(options.items())))
    if "train" in d:
        train, tasks = _train_block(doc, d["train"], path, kind)
        base = dataclasses.replace(base, train=train, train_tasks=tasks)
    variants = []
    for pt in points:
        swept = tuple((k, pt.arch[k]) for k in pt.index)
        name = base.name + (f"[{','.join(f'{k}={_show(v)}' for k, v in swept)}]" if swept else "")
        variants.append(dataclasses.replace(base, name=name, arch=tuple(sorted(pt.arch.items())), sweep=swept))
    _check_distinct(doc, adapter, variants, points)
    if base.trains:
        _check_trainable(doc, variants[0])
    return variants


# --------------------------------------------------------------------------- architecture sweeps
@dataclass(frozen=True)
class _Point:
    arch: dict[str, Any]  # the variant's full arch
    index: dict[str, int]  # swept field → position of its value in the spec's list (for lines)


def _arch_points(doc: _Doc, adapter: Any, arch: dict[str, Any]) -> list[_Point]:
    """Every variant's arch. A list-valued field the adapter accepts as one value stays one
    value; every other list sweeps its field (module docstring)."""
    try:
        adapter.validate_arch(arch)
        return [_Point(arch, {})]  # no sweep: exactly what a spec meant before sweeps existed
    except (ValueError, TypeError) as whole:
        first_error = whole
    scalars = {k: v for k, v in arch.items() if not isinstance(v, list)}
    axes: dict[str, list[Any]] = {}
    for key, value in arch.items():
        if not isinstance(value, list):
            continue
        try:
            adapter.validate_arch({**scalars, key: value})
            scalars[key] = value  # one value of a list-valued field (pattern, attn_layer_idx)
            continue
        except (ValueError, TypeError) as e:
            as_one = e
        if not value:
            raise doc.error(("arch", key), "empty list of values to sweep; give at least one value")
        if key in adapter.list_fields and not all(isinstance(x, list) for x in value):
            # scalars for a list-valued field: a sweep only if each is a valid value by itself
            # (pattern: [MMMA, MAMA]); else it was meant as one value (pattern: [mamba2, atention])
            for x in value:
                try:
                    adapter.validate_arch({**scalars, key: x})
                except (ValueError, TypeError):
                    raise doc.error(("arch", key), str(as_one)) from None
        axes[key] = value
    if not axes:  # every list is one value, yet the whole does not validate: report it as before
        field = _arch_field(str(first_error), arch)
        raise doc.error(("arch", field) if field else ("arch",), str(first_error))
    points = []
    for combo in itertools.product(*(range(len(v)) for v in axes.values())):
        index = dict(zip(axes, combo))
        full = {k: (axes[k][index[k]] if k in axes else v) for k, v in arch.items()}
        try:
            adapter.validate_arch(full)
        except (ValueError, TypeError) as e:
            field = _arch_field(str(e), full, prefer=tuple(axes))
            if field in axes and "unknown field" in str(e):  # not a field of this adapter at all
                raise doc.error(("arch", field), f"cannot sweep it: {e}") from None
            where = ("arch", field, index[field]) if field in axes else ("arch", field) if field else ("arch",)
            label = ",".join(f"{k}={_show(full[k])}" for k in axes)
            raise doc.error(where, f"{e} (variant [{label}])") from None
        points.append(_Point(full, index))
    return points


def _arch_field(msg: str, arch: Mapping[str, Any], prefer: tuple[str, ...] = ()) -> str | None:
    """The arch field an adapter's message is about: a quoted name, else the earliest field
    named as a word (swept fields first: the value to blame is on their line)."""
    quoted = _field_in_message(msg, arch)
    if quoted:
        return quoted
    import re

    found = [(m.start(), k) for k in arch if (m := re.search(rf"(?<![\w]){re.escape(str(k))}(?![\w])", msg))]
    swept = [x for x in found if x[1] in prefer]
    return min(swept or found)[1] if found else None


def _show(value: Any) -> str:
    """A swept value as it appears in a variant's name: 0.125, 64, mamba2, [1,3]."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _check_distinct(doc: _Doc, adapter: Any, variants: list[ModelSpec], points: list[_Point]) -> None:
    """Two variants with the same model identity would share every cell key: refuse them,
    naming both and what they resolved to (for native models: the attention layers)."""
    if len(variants) < 2:
        return
    seen: dict[str, int] = {}
    for j, v in enumerate(variants):
        ident = adapter.identity(v)
        if ident in seen:
            i = seen[ident]
            a, pa, pb = variants[i], points[i], points[j]
            field = next((k for k in pb.index if pa.index[k] != pb.index[k]), next(iter(pb.index)))
            raise doc.error(("arch", field, pb.index[field]),
                            f"variants '{a.name}' and '{v.name}' resolve to the same model{_resolved_as(adapter, v)}, "
                            "so they would overwrite each other in the store; drop one of the values")
        seen[ident] = j


def _resolved_as(adapter: Any, spec: ModelSpec) -> str:
    config = getattr(adapter, "config", None)
    if config is None:
        return ""
    cfg = config(spec)
    idx = getattr(cfg, "attn_layer_idx", None)
    return "" if idx is None else f" (attention layers {list(idx)} of {cfg.n_layers})"


# --------------------------------------------------------------------------- train: block
def _train_block(doc: _Doc, block: Any, path: Path, kind: str) -> tuple[tuple, tuple[str, ...]]:
    """Validate a spec's ``train:`` block with the trainer's own checks (``make_config``): its
    ``tasks`` (built-in names, or paths relative to the spec) and TrainConfig values."""
    from evalkit.train import TRAIN_FIELDS, TrainError, make_config

    if not isinstance(block, dict):
        raise doc.error(("train",), f"expected a mapping of training settings (tasks, steps, ...), got {block!r}")
    if kind != "native":
        raise doc.error(("train",), f"only native models can be trained, and this spec has kind '{kind}'")
    _check_keys(doc, block, ("tasks", *TRAIN_FIELDS), ("train",))
    tasks = block.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise doc.error(("train", "tasks"), "expected a non-empty list of task specs to train on "
                        f"(built-in names or paths relative to {path.name}), got {tasks!r}")
    refs = []
    for i, t in enumerate(tasks):
        _typed(doc, ("train", "tasks", i), t, str, "a task spec (a built-in name or a path)")
        local = Path(t) if Path(t).is_absolute() else path.parent / t
        if Path(t).suffix in (".yaml", ".yml") or "/" in t:
            if not local.is_file():
                raise doc.error(("train", "tasks", i), f"task spec '{local}' does not exist")
            refs.append(str(local.resolve()))
        elif t in builtin_names("tasks"):
            refs.append(t)
        else:
            raise doc.error(("train", "tasks", i), f"unknown task spec '{t}'{did_you_mean(t, builtin_names('tasks'))}")
    for i, ref in enumerate(refs):
        try:
            load_task_spec(ref)
        except SpecError as e:
            raise doc.error(("train", "tasks", i), f"{e}") from None
    values = {k: v for k, v in block.items() if k != "tasks"}
    try:
        make_config(values)
    except TrainError as e:
        field = next((k for k in values if k in str(e) or k.replace("_", "-") in str(e)), None)
        raise doc.error(("train", field) if field else ("train",), str(e)) from None
    return tuple(sorted(values.items())), tuple(refs)


def _check_trainable(doc: _Doc, spec: ModelSpec) -> None:
    """The trainer's own input check (task formats, task_weights against the task count)."""
    from evalkit.train import TrainError, check_inputs, make_config

    try:
        check_inputs(spec, [load_task_spec(t) for t in spec.train_tasks], make_config(dict(spec.train)))
    except TrainError as e:
        field = "task_weights" if "task_weights" in str(e) else "tasks"
        raise doc.error(("train", field), str(e)) from None


def _field_in_message(msg: str, arch: Mapping[str, Any]) -> str | None:
    for key in arch:
        if f"'{key}'" in msg:
            return str(key)
    return None


def _checkpoint_dir_spec(p: Path) -> ModelSpec:
    if (p / "model.yaml").exists():
        return load_model_spec(str(p / "model.yaml"))
    cfg = p / "config.json"
    if not cfg.exists():
        raise SpecError(f"{p}: not a checkpoint directory (no config.json or model.yaml)")
    try:
        arch = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SpecError(f"{cfg}: unreadable checkpoint config: {e}") from None
    if isinstance(arch, dict) and "model_type" in arch:  # a transformers checkpoint
        return hf_spec(str(p))
    from evalkit.models import ADAPTERS

    try:
        ADAPTERS.get("native").validate_arch(arch)
    except ValueError as e:
        raise SpecError(f"{cfg}: {e}") from None
    return ModelSpec(name=p.name, kind="native", path=str(p), arch=tuple(sorted(arch.items())),
                     checkpoint=str(p.resolve()), init_seed=0)


def hf_spec(path: str, kind: str = "hf") -> ModelSpec:
    """The ``kind: hf`` spec of a transformers checkpoint directory (``--models hf:PATH``), or with
    ``kind="vllm"`` its ``kind: vllm`` spec (``--models vllm:PATH``); the adapter's ``check`` says
    what is missing from it."""
    p = Path(path).expanduser()
    if not path or not p.exists():
        raise SpecError(f"{kind}:{path}: no such checkpoint directory")
    if not p.is_dir():
        raise SpecError(f"{kind}:{path}: expected a checkpoint directory (config.json, weights, tokenizer), got a file")
    p = p.resolve()
    name = p.name if kind == "hf" else f"{p.name}-{kind}"  # beside hf:PATH of the same directory
    return ModelSpec(name=name, kind=kind, path=None, arch=(), checkpoint=str(p), init_seed=0)
