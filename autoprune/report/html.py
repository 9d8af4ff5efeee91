"""Self-contained report.html: the recommendation and its `pick` command, the matplotlib figures inlined
as SVG (the same figures as the PNGs), a sortable table, and a few lines of JavaScript. No CDN, works
offline."""

from __future__ import annotations

import html
import json
from typing import Optional

from autoprune.report.collect import Candidate, ReportData, predictor_summary
from autoprune.search.retime import retime_summary
from autoprune.report.plots import Chart
from autoprune.report.recommend import Z, Recommendation, SplitSizes, gap_is_significant, interval

esc = html.escape


def _accuracy(value: Optional[float], n: Optional[int]) -> tuple[str, str]:
    """(cell HTML, sort key) of an accuracy with its 95% interval when the split size is known."""
    if value is None:
        return "-", ""
    if not n:
        return f"{100 * value:.2f}%", f"{value}"
    lo, hi = interval(value, n)
    return f'{100 * value:.2f}% <small>[{100 * lo:.1f}–{100 * hi:.1f}]</small>', f"{value}"


def _gap(c: Candidate, sizes: Optional[SplitSizes]) -> tuple[str, str, str]:
    """(cell HTML, sort key, class) of the val–test gap, flagged when beyond sampling noise."""
    if c.test_accuracy is None:
        return "-", "", ""
    gap = 100 * (c.test_accuracy - c.val_accuracy)
    text = f"{gap:+.2f} pt"
    if sizes is not None and gap_is_significant(c, sizes):
        return f'<span title="beyond the 95% binomial interval of the difference">⚠ {text}</span>', f"{gap}", "flag"
    return text, f"{gap}", ""


COLUMNS = ["model", "val accuracy [95% CI]", "test accuracy [95% CI]", "test − val", "val drop vs baseline",
           "median latency", "p90 latency", "speedup", "params", "MMACs", "ONNX size"]


def _row(c: Candidate, data: ReportData, sizes: Optional[SplitSizes], rec: Optional[Recommendation]) -> str:
    base = data.baseline
    is_rec = rec is not None and rec.model.trial == c.trial
    val, val_key = _accuracy(c.val_accuracy, sizes.val if sizes else None)
    test, test_key = _accuracy(c.test_accuracy, sizes.test if sizes else None)
    gap, gap_key, gap_class = _gap(c, sizes)
    drop = 100 * (base.val_accuracy - c.val_accuracy)
    speedup = base.latency_ms / c.latency_ms
    cells = [(f"{esc(c.label)}{' ★ recommended' if is_rec else ''}", str(c.trial), ""),
             (val, val_key, ""), (test, test_key, ""), (gap, gap_key, gap_class),
             (f"{drop:.2f} pt", f"{drop}", ""), (f"{c.latency_ms:.4g} ms", f"{c.latency_ms}", ""),
             (f"{c.latency_p90_ms:.4g} ms", f"{c.latency_p90_ms}", ""), (f"{speedup:.2f}×", f"{speedup}", ""),
             (f"{c.params:,}", f"{c.params}", ""), (f"{c.macs / 1e6:,.2f}", f"{c.macs}", ""),
             (f"{c.onnx_bytes / 1024:,.1f} KB", f"{c.onnx_bytes}", "")]
    tds = "".join(f'<td data-v="{esc(key)}"{f" class={klass}" if klass else ""}>{text}</td>' for text, key, klass in cells)
    return f'<tr id="row-{esc(c.label.lstrip("#"))}"{" class=rec" if is_rec else ""}>{tds}</tr>'


def models_table(data: ReportData, sizes: Optional[SplitSizes], rec: Optional[Recommendation]) -> str:
    head = "".join(f'<th onclick="sortBy(this, {i})">{esc(name)} ⇅</th>' for i, name in enumerate(COLUMNS))
    body = "".join(_row(c, data, sizes, rec) for c in [data.baseline, *data.front])
    return f'<table id="models"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def recommendation(data: ReportData, rec: Optional[Recommendation], sizes: Optional[SplitSizes]) -> str:
    if rec is None:
        return ('<section id="recommendation"><p>No Pareto model is faster than the baseline: '
                "nothing to recommend over it.</p></section>")
    c, base = rec.model, data.baseline
    val, _ = _accuracy(c.val_accuracy, sizes.val if sizes else None)
    test, _ = _accuracy(c.test_accuracy, sizes.test if sizes else None)
    return f"""<section id="recommendation"><h2>Recommended model: <span id="rec-model">{esc(c.label)}</span></h2>
<p>{esc(c.label)} is {esc(rec.reason)}. Validation accuracy {val}, test accuracy {test}; median latency {c.latency_ms:.4g} ms
({base.latency_ms / c.latency_ms:.2f}× faster than the baseline's {base.latency_ms:.4g} ms); {c.params:,} parameters.</p>
<p>Register it in the MLflow Model Registry (alias <code>deploy</code>) and export its ONNX to
<code>deploy/model.onnx</code> with <code>pick</code> (add the <code>search.storage=</code> and
<code>tracking.uri=</code> overrides the search ran with, if any):</p>
<pre id="pick-command">{esc(rec.command)}</pre></section>"""


def _info(c: Candidate, base: Candidate) -> dict:
    return {"model": c.label, "val accuracy": f"{100 * c.val_accuracy:.2f}%",
            "test accuracy": "-" if c.test_accuracy is None else f"{100 * c.test_accuracy:.2f}%",
            "median latency": f"{c.latency_ms:.4g} ms", "speedup": f"{base.latency_ms / c.latency_ms:.2f}×",
            "params": f"{c.params:,}", "plan (pruning ratio per group)": {g: round(r, 3) for g, r in sorted(c.ratios.items())}}


SCRIPT = """
const info = JSON.parse(document.getElementById('points').textContent), tip = document.getElementById('tip');
document.querySelectorAll('#fig-pareto g[id^="pt-"]').forEach(p => {
  const d = info[p.id.slice(3)]; if (!d) return;
  p.style.cursor = 'pointer';
  p.addEventListener('mousemove', e => { tip.textContent = JSON.stringify(d, null, 1);
    tip.style.display = 'block'; tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px'; });
  p.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
});
function sortBy(th, col) {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const v = r.cells[col].dataset.v; const n = parseFloat(v); return v === '' ? -Infinity : isNaN(n) ? v : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}
"""

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1150px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th{background:#f5f5f5}
#models th{cursor:pointer}tr.rec td{background:#e8f5e9;font-weight:600}td.flag{color:#b71c1c}small{color:#666}
#recommendation{border:2px solid #2ca02c;border-radius:6px;padding:0 1em;margin:1em 0}
pre{background:#f5f5f5;padding:.6em;white-space:pre-wrap;word-break:break-all}
svg.figure{max-width:100%;height:auto;display:block}#tip{position:absolute;display:none;background:#fff;
border:1px solid #888;padding:6px;font:11px monospace;white-space:pre;pointer-events:none}"""


def render(data: ReportData, title: str, charts: list[Chart], rec: Optional[Recommendation],
           sizes: Optional[SplitSizes]) -> str:
    context = {"study": data.study_name, "completed trials": len(data.trials),
               "feasible trials": sum(c.feasible for c in data.trials), "failed trials": data.n_failed,
               **({"rung-0 candidates not promoted": data.n_candidates} if data.n_candidates else {}),
               "Pareto models": len(data.front),
               "validation / test examples": "unknown" if sizes is None else f"{sizes.val:,} / {sizes.test:,}",
               **{f"hw {k}": v for k, v in sorted(data.fingerprint.items())}}
    if data.predictor:   # search.screen
        context["latency predictor (screening)"] = predictor_summary(data.predictor)
    if data.retime:   # search.retime
        context["re-timed at the end"] = retime_summary(data.retime)
    ctx = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in context.items())
    figures = {chart.name: f'<h2>{esc(chart.title)}</h2>{chart.svg()}' for chart in charts}
    points = {c.label.lstrip("#"): _info(c, data.baseline) for c in [data.baseline, *data.trials]}
    points_json = json.dumps(points).replace("</", "<\\/")  # safe inside <script>
    pareto, heatmap, progress = (figures.get(name, "") for name in ("pareto", "heatmap", "progress"))
    if sizes is None:
        stats = "Split sizes unknown: accuracy intervals and the val–test check are left out."
    else:
        stats = (f"Accuracies carry their 95% Wilson interval ({sizes.val:,} validation, {sizes.test:,} test "
                 f"examples). ⚠ marks a model whose test and validation accuracy differ by more than "
                 f"{Z:.2f} standard errors of the difference (pooled two-proportion z-test): more than the "
                 "sampling noise of these splits explains, so trust its test number over its validation one.")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style></head>
<body><h1>{esc(title)}</h1>
{recommendation(data, rec, sizes)}
<p>Selection used the validation split; test accuracy was computed once for the Pareto models. Latencies
are measured medians on the target profile; speedup = baseline median latency / model median latency.
Hover a point for its plan; click a column to sort.</p>
{pareto}
<h2>Pareto models</h2>{models_table(data, sizes, rec)}
<p>{esc(stats)}</p>
{heatmap}
{progress}
<h2>Hardware and search</h2><table id="context">{ctx}</table>
<div id="tip"></div><script type="application/json" id="points">{points_json}</script>
<script>{SCRIPT}</script></body></html>
"""
