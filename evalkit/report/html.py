"""The leaderboard as one self-contained HTML file: inline CSS, inline SVG plots, a small inline
table sorter. No network, no external files; opens offline in any browser.

Opened with ``#selftest`` in its URL, the page checks itself (sorts a column, counts the plots,
collects script errors) and writes the result as JSON into ``<pre id="selftest">``; the browser
test reads it back from the dumped DOM.
"""

from __future__ import annotations

import datetime as _dt
import json
from html import escape
from typing import Any

from evalkit.report import plots
from evalkit.report.data import NO_COST_DATA, Recall, ReportData

PLOT_KINDS = ("recall-vs-length", "needle-heatmap", "recall-vs-cost", "recall-vs-attention", "cost-vs-length")

CSS = """
:root{--fg:#1d232a;--mute:#5b6670;--line:#dde2e7;--bad:#c0392b;--ok:#1e7d46;--bg2:#f5f7f9}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0 auto;max-width:1480px;padding:20px 28px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.sub,.note,figcaption{color:var(--mute);font-size:12px}
nav a{margin-right:14px;color:#1f5fa8}
.banner{background:#fdecea;border:1px solid var(--bad);color:var(--bad);padding:8px 12px;border-radius:4px;margin:12px 0;font-weight:600}
.wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap;vertical-align:top}
th{background:var(--bg2);position:sticky;top:0;white-space:normal;vertical-align:bottom}
td.t{white-space:normal}
td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#aab}
table.sortable th[aria-sort=ascending]::after{content:" \\2191";color:var(--fg)}
table.sortable th[aria-sort=descending]::after{content:" \\2193";color:var(--fg)}
tr.random td{background:#fff6f5}
.badge{display:inline-block;background:var(--bad);color:#fff;border-radius:3px;padding:0 5px;font-size:10.5px;margin-left:5px;font-weight:600}
.ci{color:var(--mute);font-size:10.5px;display:block}
.failed{color:var(--bad);font-weight:700}
.pass{color:var(--ok);font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(720px,1fr))}
.grid figure.plot svg{max-width:720px}.grid.wide figure.plot svg{max-width:920px}.grid.small figure.plot svg{max-width:none}
.grid.small{grid-template-columns:repeat(auto-fill,minmax(300px,1fr))}
figure.plot{margin:0;border:1px solid var(--line);border-radius:4px;padding:8px;background:#fff}
figure.plot svg{display:block;height:auto}
.nodata{padding:30px 12px;text-align:center;color:var(--mute);background:var(--bg2);border-radius:3px;font-style:italic}
code{background:var(--bg2);padding:0 3px;border-radius:2px}
pre#selftest{display:none}
"""

# collects script errors before anything else runs
HEAD_JS = """
window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message||e));});
(function(){var ce=console.error;console.error=function(){window.__errors.push(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();
"""

SORT_JS = """
(function(){
function key(td){var v=td?td.getAttribute('data-sort'):null;if(v===null)v=td?td.textContent.trim():'';return v;}
function cmp(a,b){if(a===''&&b==='')return 0;if(a==='')return 1;if(b==='')return -1;
  var x=parseFloat(a),y=parseFloat(b);if(!isNaN(x)&&!isNaN(y)&&isFinite(a)&&isFinite(b))return x-y;
  return a.localeCompare(b,undefined,{numeric:true});}
function sortBy(table,col,dir){var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(r1,r2){var a=key(r1.cells[col]),b=key(r2.cells[col]);
    if(a===''||b==='')return cmp(a,b);return dir*cmp(a,b);});
  rows.forEach(function(r){body.appendChild(r);});
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    if(i===col)th.setAttribute('aria-sort',dir>0?'ascending':'descending');else th.removeAttribute('aria-sort');});}
window.sortTable=sortBy;
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(table){
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    th.addEventListener('click',function(){sortBy(table,i,th.getAttribute('aria-sort')==='ascending'?-1:1);});});});
})();
"""

SELFTEST_JS = """
(function(){
if(location.hash!=='#selftest')return;
var out={sorted:false,plots:0,kinds:[],missing:[],errors:[]};
try{
  var table=document.getElementById('leaderboard-table');var ths=table.tHead.rows[0].cells;var col=-1;
  for(var i=0;i<ths.length;i++)if(ths[i].hasAttribute('data-selftest'))col=i;
  function vals(){return Array.prototype.map.call(table.tBodies[0].rows,function(r){return r.cells[col].getAttribute('data-sort');})
    .filter(function(v){return v!=='';}).map(parseFloat);}
  function mono(v,d){for(var j=1;j<v.length;j++)if(d*(v[j]-v[j-1])<0)return false;return true;}
  ths[col].click();var up=vals();ths[col].click();var down=vals();
  out.sorted=col>=0&&up.length>1&&mono(up,1)&&mono(down,-1)&&ths[col].getAttribute('aria-sort')==='descending';
  out.sort_column=ths[col].textContent.trim();out.sorted_values=up;
  var figs=document.querySelectorAll('figure.plot');
  out.plots=document.querySelectorAll('figure.plot svg').length;
  var kinds={};Array.prototype.forEach.call(figs,function(f){kinds[f.getAttribute('data-plot')]=1;});
  out.kinds=Object.keys(kinds).sort();
  out.missing=document.body.getAttribute('data-plots').split(' ').filter(function(k){return !kinds[k];});
}catch(e){window.__errors.push('selftest: '+e);}
out.errors=window.__errors;
var pre=document.getElementById('selftest');pre.textContent=JSON.stringify(out);pre.setAttribute('data-done','1');
})();
"""


# ----------------------------------------------------------------------------------- formatting
def fmt_num(v: float | None, unit: str = "") -> str:
    """Engineering-style short number: 1.23M, 4.5 GiB, 12.3 ms."""
    if v is None:
        return "—"
    if unit == "B":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024 or u == "TiB":
                return f"{v:.0f} {u}" if u == "B" else f"{v:.1f} {u}"
            v /= 1024
    if unit == "s":
        for scale, u in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
            if abs(v) >= scale or u == "ns":
                return f"{v / scale:.3g} {u}"
    for scale, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{u}"
    return f"{v:.3g}"


def _sort_attr(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def _td(text: str, sort: float | str | None, cls: str = "", title: str = "") -> str:
    s = sort if isinstance(sort, str) else _sort_attr(sort)
    return (f'<td data-sort="{escape(s)}"' + (f' class="{cls}"' if cls else "")
            + (f' title="{escape(title)}"' if title else "") + f">{text}</td>")


def _recall_td(r: Recall | None, threshold: float) -> str:
    """A recall cell, marked as passing when it reaches the row's effective-length threshold."""
    if r is None:
        return _td("—", None)
    if r.failed:
        return _td('<span class="failed">FAILED</span>', -1, title=r.error or "")
    lo, hi = r.ci
    cls = "pass" if (r.value or 0) >= threshold else ""
    return _td(f'<span class="{cls}">{r.value:.2f}</span> <span class="ci">[{lo:.2f}, {hi:.2f}] n={r.n}</span>', r.value)


# ----------------------------------------------------------------------------------- sections
def _leaderboard(data: ReportData) -> str:
    ref = data.reference_length
    any_axes = any(r.axes for r in data.rows)
    head = ['<th class="t">task</th>', '<th class="t">model</th>', '<th class="t">architecture</th>',
            "<th>attn. fraction</th>", "<th>params</th>"]
    if any_axes:
        head.append('<th class="t">axes</th>')
    head += [f'<th title="recall at context length {L} (95% Wilson interval, pooled samples)">L={L}</th>' for L in data.lengths]
    head += ['<th data-selftest="1" title="longest context length with recall ≥ the row\'s threshold">eff. length</th>',
             ('<th title="the recall an effective length needs: the task\'s own (RULER\'s NIAH: 0.856), else 0.5, '
              'or --threshold">threshold</th>'),
             f"<th>prefill @{ref}</th>", f"<th>decode/tok @{ref}</th>", f"<th>state bytes @{ref}</th>",
             '<th title="least-squares slope of log prefill time vs log length">cost exponent</th>']
    body = []
    for row in data.rows:
        facts = data.models[row.model]
        badge = '<span class="badge" title="no checkpoint: recall of random weights means nothing">RANDOM WEIGHTS</span>' if facts.random_weights else ""
        cells = [_td(escape(row.spec), row.spec, "t"), _td(escape(row.model) + badge, row.model, "t"),
                 _td(escape(facts.architecture), facts.architecture, "t"),
                 _td("—" if facts.attention_fraction is None else f"{facts.attention_fraction:.2f}", facts.attention_fraction),
                 _td(fmt_num(facts.params), facts.params)]
        if any_axes:
            cells.append(_td(escape(row.axes_label), row.axes_label, "t"))
        cells += [_recall_td(row.recall.get(L), row.threshold) for L in data.lengths]
        eff = row.effective_length
        cells += [_td(str(eff) if eff else f"&lt;{data.lengths[0]}", eff or 0),
                  _td(f"{row.threshold:g}", row.threshold)]
        prefill, decode = data.cost_at(row.model, "prefill_s"), data.cost_at(row.model, "decode_s_per_token")
        state = data.state_bytes_at_ref(row.model)
        exp = data.exponents.get(row.model)
        cells += [_td(fmt_num(prefill, "s"), prefill), _td(fmt_num(decode, "s"), decode), _td(fmt_num(state, "B"), state),
                  _td("—" if exp is None else f"{exp:.2f}", exp)]
        body.append(f'<tr class="{"random" if facts.random_weights else ""}">' + "".join(cells) + "</tr>")
    cost_note = (f"Cost columns: measured on <b>{escape(data.cost_device or '')}</b> at L={ref}."
                 if data.costs else f'Cost columns: <span class="failed">{escape(NO_COST_DATA)}</span>; '
                 "state bytes are the adapter's analytic KV cache + fixed state.")
    return f"""<section id="leaderboard"><h2>Leaderboard</h2>
<p class="note">Recall = whole-answer exact match pooled over needle depth (and other pooled axes), with its 95% Wilson
interval and sample count. {escape(data.threshold_note())} {cost_note}
Click a column header to sort.</p>
<div class="wrap"><table class="sortable" id="leaderboard-table"><thead><tr>{''.join(head)}</tr></thead>
<tbody>{''.join(body)}</tbody></table></div></section>"""


def _figure(kind: str, svg: str | None, caption: str, extra: str = "") -> str:
    inner = svg if svg is not None else f'<div class="nodata">{escape(NO_COST_DATA)}</div>'
    cls = "plot" if svg is not None else "plot empty"
    return f'<figure class="{cls}" data-plot="{kind}"{extra}>{inner}<figcaption>{escape(caption)}</figcaption></figure>'


def _plots(data: ReportData) -> tuple[str, list[str]]:
    ref = data.reference_length
    parts, kinds = [], ["recall-vs-length", "recall-vs-cost", "recall-vs-attention", "cost-vs-length"]
    parts.append('<h3 id="recall-length">Recall vs context length</h3><div class="grid">')
    parts += [_figure("recall-vs-length", plots.recall_vs_length(data, s), f"{s}: recall per context length, error bars "
                      "are 95% Wilson intervals; dashed = random weights; red × = failed cell.", f' data-spec="{escape(s)}"')
              for s in data.specs]
    parts.append("</div>")
    if data.heatmaps:
        kinds.insert(1, "needle-heatmap")
        parts.append('<h3 id="heatmaps">Needle heatmaps (depth × length)</h3><div class="grid small">')
        parts += [_figure("needle-heatmap", plots.needle_heatmap(data, s, m), f"{s} / {m}: recall per needle depth "
                          "and context length; × = failed.", f' data-spec="{escape(s)}" data-model="{escape(m)}"')
                  for s, m in data.heatmaps]
        parts.append("</div>")
    parts.append('<h3 id="cost">Recall vs cost</h3><div class="grid wide">')
    parts += [_figure("recall-vs-cost", plots.recall_vs_cost(data, s), f"{s}: recall at L={ref} (pooled over the task's "
                      f"cells) vs prefill latency, state bytes, decode latency and FLOPs at L={ref}; squares mark the "
                      "Pareto frontier (lower cost, higher recall); hollow = random weights.", f' data-spec="{escape(s)}"')
              for s in data.specs]
    parts.append('</div><h3 id="attention">Recall vs attention fraction · cost vs length</h3><div class="grid">')
    parts.append(_figure("recall-vs-attention", plots.recall_vs_attention(data),
                         f"recall at L={ref} vs the fraction of attention layers, per task."))
    parts.append(_figure("cost-vs-length", plots.cost_vs_length(data),
                         "prefill latency vs context length (log-log); the exponent is the least-squares slope of "
                         "log time vs log length (2 = quadratic attention, 1 = linear SSM)."))
    parts.append("</div>")
    return '<section id="plots"><h2>Plots</h2>' + "".join(parts) + "</section>", kinds


def _provenance(data: ReportData) -> str:
    cols = ("run_id", "status", "started_at", "finished_at", "git_commit", "evalkit_version", "torch_version",
            "device", "device_name", "seeds", "cells", "failed", "samples", "command")
    rows = []
    for run in data.runs:
        tds = []
        for c in cols:
            v = run.get(c)
            if c == "seeds":
                v = ", ".join(map(str, v))
            elif c == "git_commit" and v:
                v = str(v)[:12]
            tds.append(_td(escape("—" if v is None else str(v)), v if isinstance(v, (int, float)) else str(v or ""),
                           "" if isinstance(v, (int, float)) else "t"))
        rows.append("<tr>" + "".join(tds) + "</tr>")
    head = "".join(f'<th class="{"" if c in ("cells", "failed", "samples") else "t"}">{c}</th>' for c in cols)
    return f"""<section id="provenance"><h2>Provenance</h2>
<p class="note">Runs that last computed the reported cells (from the store's <code>runs</code> table); cells = cells of this
report from that run, samples = scored samples of its complete cells.</p>
<div class="wrap"><table class="sortable" id="provenance-table"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>
</section>"""


def _thresholds(data: ReportData) -> str:
    if data.threshold is not None:
        return f"{data.threshold:g}"
    return "per task: " + "/".join(f"{t:g}" for t in data.thresholds)


def render_html(data: ReportData, source: str = "", title: str = "evalkit leaderboard") -> str:
    """The whole report as one HTML string."""
    plots_html, kinds = _plots(data)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    banner = ""
    if data.random_models:
        banner = (f'<div class="banner">RANDOM WEIGHTS: {escape(", ".join(data.random_models))} ha'
                  f'{"s" if len(data.random_models) == 1 else "ve"} no checkpoint; their recall means nothing.</div>')
    if data.n_failed:
        banner += f'<div class="banner">{data.n_failed} of {data.n_cells} cells failed (shown as FAILED / ×).</div>'
    sub = (f"{len(data.models)} models · {len(data.specs)} tasks · {data.n_cells} cells · lengths "
           f"{', '.join(map(str, data.lengths))} · threshold {_thresholds(data)} · reference length {data.reference_length}"
           f" · generated {now}" + (f" from <code>{escape(source)}</code>" if source else ""))
    meta: dict[str, Any] = {"threshold": data.threshold, "reference_length": data.reference_length,
                            "thresholds": {f"{r.spec}/{r.label}": r.threshold for r in data.rows},
                            "runs": [r["run_id"] for r in data.runs]}
    meta_json = json.dumps(meta).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="evalkit report"><title>{escape(title)}</title>
<style>{CSS}</style><script>{HEAD_JS}</script></head>
<body data-plots="{' '.join(kinds)}">
<header><h1>{escape(title)}</h1><p class="sub">{sub}</p>
<nav><a href="#leaderboard">leaderboard</a><a href="#plots">plots</a><a href="#provenance">provenance</a></nav></header>
{banner}
{_leaderboard(data)}
{plots_html}
{_provenance(data)}
<pre id="selftest"></pre>
<script type="application/json" id="report-meta">{meta_json}</script>
<script>{SORT_JS}</script>
<script>{SELFTEST_JS}</script>
</body></html>
"""

