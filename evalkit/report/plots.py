"""The report's plots: matplotlib figures rendered to small inline SVG strings.

No pyplot (no global backend state): each plot builds a ``Figure``, saves it as SVG with text kept
as text (``svg.fonttype: none``, no embedded glyphs), and returns the ``<svg>`` element with the
XML header and metadata stripped and its ids made unique, so many plots can share one HTML page.
Random-weight models are drawn dashed and labelled; failed cells are marked with a red ×.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from typing import Any

from evalkit.report.data import COST_METRICS, ReportData, pareto_front

_RC = {
    "svg.fonttype": "none", "svg.hashsalt": "evalkit", "font.size": 8, "axes.titlesize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.fontsize": 7, "legend.frameon": False, "path.simplify": True,
}
_ids = itertools.count()
FAILED_COLOR = "#c0392b"


def _colors(data: ReportData) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(data.models)}


def _label(data: ReportData, model: str) -> str:
    return f"{model} (RANDOM weights)" if data.models[model].random_weights else model


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _svg(fig: Any) -> str:
    """Figure → a standalone ``<svg>`` element whose ids cannot collide with another plot's."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    prefix = f"p{next(_ids)}-"
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(href="#|url\(#)([^")]+)', lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
    # scale with the page instead of a fixed size in points
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', text, count=1)
    return text.strip()


def _styled(fn: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_styled
def recall_vs_length(data: ReportData, spec: str) -> str:
    """Recall (Wilson 95 % band as error bars) against context length, one line per row of ``spec``."""
    fig = _figure(6.2, 3.4)
    ax = fig.add_subplot()
    colors = _colors(data)
    for row in (r for r in data.rows if r.spec == spec):
        ok = [(L, r) for L, r in sorted(row.recall.items()) if r.value is not None]
        if ok:
            xs = [L for L, _ in ok]
            ys = [r.value for _, r in ok]
            lo = [y - r.ci[0] for y, (_, r) in zip(ys, ok)]
            hi = [r.ci[1] - y for y, (_, r) in zip(ys, ok)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=3, capsize=2, lw=1.2, color=colors[row.model],
                        ls="--" if data.models[row.model].random_weights else "-",
                        label=_label(data, row.model) + (f" {row.axes_label}" if row.axes else ""))
        bad = [L for L, r in row.recall.items() if r.failed]
        if bad:
            ax.plot(bad, [0.0] * len(bad), "x", color=FAILED_COLOR, ms=7, mew=2)
    if any(r.failed for row in data.rows if row.spec == spec for r in row.recall.values()):
        ax.plot([], [], "x", color=FAILED_COLOR, mew=2, label="failed cell")
    for t in sorted({row.threshold for row in data.rows if row.spec == spec}):  # one per task, normally
        ax.axhline(t, color="0.5", lw=0.8, ls=":", label=f"threshold {t:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(data.lengths, [str(L) for L in data.lengths])
    ax.minorticks_off()
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("recall (exact match)")
    ax.set_title(f"{spec}: recall vs context length (95% Wilson)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _svg(fig)


@_styled
def needle_heatmap(data: ReportData, spec: str, model: str) -> str:
    """Recall per (needle depth × context length) of one model; failed cells crossed out."""
    cells = data.heatmaps[(spec, model)]
    depths = sorted({d for d, _ in cells})
    lengths = sorted({L for _, L in cells})
    fig = _figure(3.3, 0.45 + 0.32 * max(3, len(depths)))
    ax = fig.add_subplot()
    grid = [[math.nan] * len(lengths) for _ in depths]
    for (d, L), r in cells.items():
        i, j = depths.index(d), lengths.index(L)
        if r.value is not None:
            grid[i][j] = r.value
    mesh = ax.pcolormesh(range(len(lengths) + 1), range(len(depths) + 1), grid, cmap="viridis", vmin=0, vmax=1)
    for (d, L), r in cells.items():
        i, j = depths.index(d), lengths.index(L)
        if r.value is None:
            ax.text(j + 0.5, i + 0.5, "×", ha="center", va="center", color=FAILED_COLOR, fontsize=11, fontweight="bold")
        else:
            ax.text(j + 0.5, i + 0.5, f"{r.value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if r.value < 0.6 else "black")
    ax.set_xticks([j + 0.5 for j in range(len(lengths))], [str(L) for L in lengths])
    ax.set_yticks([i + 0.5 for i in range(len(depths))], [f"{d:g}" for d in depths])
    ax.grid(False)
    ax.set_xlabel("context length")
    ax.set_ylabel("needle depth")
    ax.set_title(_label(data, model), color=FAILED_COLOR if data.models[model].random_weights else "black")
    fig.colorbar(mesh, ax=ax, shrink=0.9, label="recall")
    return _svg(fig)


@_styled
def recall_vs_cost(data: ReportData, spec: str) -> str | None:
    """Recall at the reference length against each cost metric, Pareto frontier stepped; None
    when there is no cost data."""
    from matplotlib.ticker import EngFormatter, NullFormatter

    if not data.costs:
        return None
    colors = _colors(data)
    fig = _figure(8.0, 5.0)
    axes = fig.subplots(2, 2)
    for ax, (metric, label) in zip(axes.flat, COST_METRICS.items()):
        pts, names = [], []
        for model in data.models:
            r = data.recall_at_ref.get((spec, model))
            x = data.cost_at(model, metric) if metric != "state_bytes" else data.state_bytes_at_ref(model)
            if r is None or r.value is None or x is None or x <= 0:
                continue
            pts.append((x, r.value))
            names.append(model)
            lo, hi = r.ci
            ax.errorbar([x], [r.value], yerr=[[r.value - lo], [hi - r.value]], fmt="o", ms=5, capsize=2,
                        color=colors[model], mfc="none" if data.models[model].random_weights else colors[model],
                        label=_label(data, model))
        if not pts:
            ax.text(0.5, 0.5, f"no {metric} at L={data.reference_length}", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label)
            continue
        front = [pts[i] for i in pareto_front(pts)]
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.3", lw=1, ls="--")
        ax.plot([p[0] for p in front], [p[1] for p in front], "s", ms=9, mfc="none", mec="0.2",
                label="Pareto frontier" if ax is axes.flat[0] else None)
        xs = [p[0] for p in pts]
        if max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis overlap
        else:  # under a decade a log axis has no labelled tick
            ax.xaxis.set_major_formatter(EngFormatter(unit="s" if metric.endswith("_s") or "_s_" in metric else ""))
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(label)
        ax.set_ylabel(f"recall @ L={data.reference_length}")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center")
    fig.suptitle(f"{spec}: recall vs cost at L={data.reference_length} ({data.cost_device})", fontsize=9)
    return _svg(fig)


@_styled
def recall_vs_attention(data: ReportData) -> str:
    """Recall at the reference length against the model's attention fraction, one series per task."""
    fig = _figure(5.2, 3.2)
    ax = fig.add_subplot()
    for spec, marker in zip(data.specs, itertools.cycle("os^Dv")):
        xs, ys, err, names = [], [], [[], []], []
        for model, facts in data.models.items():
            r = data.recall_at_ref.get((spec, model))
            if r is None or r.value is None or facts.attention_fraction is None:
                continue
            xs.append(facts.attention_fraction)
            ys.append(r.value)
            err[0].append(r.value - r.ci[0])
            err[1].append(r.ci[1] - r.value)
            names.append(model + (" (random)" if facts.random_weights else ""))
        if xs:
            ax.errorbar(xs, ys, yerr=err, fmt=marker, ms=5, capsize=2, label=spec)
            for x, y, n in zip(xs, ys, names):
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("attention fraction (attention layers / all layers)")
    ax.set_ylabel(f"recall @ L={data.reference_length}")
    ax.set_title("recall vs attention fraction")
    ax.legend(loc="best")
    return _svg(fig)


@_styled
def cost_vs_length(data: ReportData) -> str | None:
    """Prefill latency against context length on log-log axes, with each model's fitted exponent."""
    if not data.costs:
        return None
    colors = _colors(data)
    fig = _figure(5.6, 3.4)
    ax = fig.add_subplot()
    for model, pts in data.costs.items():
        xs = list(pts)
        ys = [p["prefill_s"] for p in pts.values()]
        e = data.exponents.get(model)
        ax.plot(xs, ys, "o-", ms=3, lw=1.2, color=colors.get(model),
                label=f"{model}: ∝ L^{e:.2f}" if e is not None else f"{model}: (one length)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("prefill latency (s)")
    ax.set_title(f"prefill cost vs length ({data.cost_device}); fitted exponents")
    ax.legend(loc="upper left")
    return _svg(fig)
