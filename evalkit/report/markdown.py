"""The leaderboard as GitHub-flavoured markdown, for READMEs and PR comments (no plots: those are
in the HTML report)."""

from __future__ import annotations

from evalkit.report.data import NO_COST_DATA, Recall, ReportData
from evalkit.report.html import fmt_num


def _recall(r: Recall | None) -> str:
    if r is None:
        return "—"
    if r.failed:
        return "**FAILED**"
    lo, hi = r.ci
    return f"{r.value:.2f} [{lo:.2f}, {hi:.2f}] n={r.n}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(data: ReportData) -> str:
    """Leaderboard table, cost exponents and provenance as one markdown document."""
    ref = data.reference_length
    any_axes = any(r.axes for r in data.rows)
    head = ["task", "model", "architecture", "attn. fraction", "params"] + (["axes"] if any_axes else [])
    head += [f"L={L}" for L in data.lengths]
    head += ["eff. length", "threshold", f"prefill @{ref}", f"state bytes @{ref}", "cost exponent"]
    lines = ["## evalkit leaderboard", ""]
    if data.random_models:
        lines += [f"> **RANDOM WEIGHTS:** {', '.join(data.random_models)} (no checkpoint; recall means nothing)", ""]
    lines += ["Recall = whole-answer exact match pooled over needle depth, 95% Wilson interval, n samples. "
              f"{data.threshold_note()} "
              + (f"Costs measured on {data.cost_device} at L={ref}." if data.costs else f"Costs: {NO_COST_DATA}."), ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 3 or (any_axes and i == 5) else "---:" for i in range(len(head))) + "|")
    for row in data.rows:
        facts = data.models[row.model]
        exp = data.exponents.get(row.model)
        cells = [row.spec, row.model + (" ⚠ RANDOM WEIGHTS" if facts.random_weights else ""), facts.architecture,
                 "—" if facts.attention_fraction is None else f"{facts.attention_fraction:.2f}", fmt_num(facts.params)]
        if any_axes:
            cells.append(row.axes_label)
        cells += [_recall(row.recall.get(L)) for L in data.lengths]
        cells += [str(row.effective_length) if row.effective_length else f"<{data.lengths[0]}", f"{row.threshold:g}",
                  fmt_num(data.cost_at(row.model, "prefill_s"), "s"), fmt_num(data.state_bytes_at_ref(row.model), "B"),
                  "—" if exp is None else f"{exp:.2f}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "<details><summary>Provenance</summary>", "",
              "| run | status | started | commit | device | seeds | cells | samples |", "|---|---|---|---|---|---|---:|---:|"]
    for run in data.runs:
        lines.append("| " + " | ".join(_cell(str(c)) for c in (
            run["run_id"], run["status"], run["started_at"], (run.get("git_commit") or "—")[:12],
            f"{run.get('device') or '—'} ({run.get('device_name') or '?'})", ", ".join(map(str, run["seeds"])),
            run["cells"], run["samples"])) + " |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)
