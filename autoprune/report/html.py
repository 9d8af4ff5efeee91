"""Self-contained HTML report: inline SVG and a few lines of JavaScript, no CDN, works offline."""

from __future__ import annotations

import html
import json

from autoprune.report.collect import Candidate, ReportData

W, H, PAD = 640, 380, 48


def _scale(values, lo_px, hi_px, pad=0.05):
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    return lambda v: lo_px + (v - lo) / (hi - lo) * (hi_px - lo_px), (lo, hi)


def _info(c: Candidate, base: Candidate) -> str:
    d = {"model": c.label, "val acc %": round(100 * c.val_accuracy, 2),
         "test acc %": None if c.test_accuracy is None else round(100 * c.test_accuracy, 2),
         "latency ms": round(c.latency_ms, 4), "speedup": round(base.latency_ms / c.latency_ms, 2),
         "params": c.params, "plan": {g: round(r, 3) for g, r in sorted(c.ratios.items())}}
    return html.escape(json.dumps(d), quote=True)


def scatter_svg(data: ReportData) -> str:
    base, pts = data.baseline, [*data.trials, data.baseline]
    sx, (x0, x1) = _scale([c.latency_ms for c in pts], PAD, W - 10)
    sy, (y0, y1) = _scale([100 * c.val_accuracy for c in pts], H - PAD, 10)
    out = [f'<svg id="scatter" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-size="11">']
    for i in range(6):  # grid + tick labels
        xv, yv = x0 + i * (x1 - x0) / 5, y0 + i * (y1 - y0) / 5
        out.append(f'<line x1="{sx(xv):.1f}" x2="{sx(xv):.1f}" y1="10" y2="{H - PAD}" stroke="#eee"/>'
                   f'<text x="{sx(xv):.1f}" y="{H - PAD + 14}" text-anchor="middle">{xv:.3g}</text>'
                   f'<line x1="{PAD}" x2="{W - 10}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee"/>'
                   f'<text x="{PAD - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.1f}</text>')
    out.append(f'<text x="{(W + PAD) / 2}" y="{H - 8}" text-anchor="middle">median latency (ms, measured)</text>'
               f'<text transform="translate(12 {H / 2}) rotate(-90)" text-anchor="middle">validation accuracy (%)</text>')
    steps = []
    for i, c in enumerate(data.front):
        steps.append(f"{sx(c.latency_ms):.1f},{sy(100 * c.val_accuracy):.1f}")
        nxt = data.front[i + 1] if i + 1 < len(data.front) else None
        if nxt:
            steps.append(f"{sx(nxt.latency_ms):.1f},{sy(100 * c.val_accuracy):.1f}")
    if steps:
        out.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="#d62728" stroke-width="1.5"/>')
    on_front = {c.trial for c in data.front}
    for c in data.trials:
        color, r = ("#d62728", 5) if c.trial in on_front else ("#aaaaaa", 3.5)
        fill = color if c.feasible else "none"  # hollow: violates a search constraint
        out.append(f'<circle class="pt" cx="{sx(c.latency_ms):.1f}" cy="{sy(100 * c.val_accuracy):.1f}" r="{r}" '
                   f'fill="{fill}" stroke="{color}" data-info="{_info(c, base)}"/>')
    out.append(f'<circle class="pt" cx="{sx(base.latency_ms):.1f}" cy="{sy(100 * base.val_accuracy):.1f}" r="7" '
               f'fill="#1f77b4" data-info="{_info(base, base)}"/>')
    out.append("</svg>")
    return "".join(out)


def progress_svg(data: ReportData) -> str:
    if not data.hypervolume:
        return "<p>no completed trials yet</p>"
    w, h = 480, 200
    sx, _ = _scale([n for n, _ in data.hypervolume], 40, w - 10, pad=0.0)
    sy, (y0, y1) = _scale([v for _, v in data.hypervolume] + [0.0], h - 30, 10, pad=0.0)
    line = " ".join(f"{sx(n):.1f},{sy(v):.1f}" for n, v in data.hypervolume)
    return (f'<svg width="{w}" height="{h}" font-size="11"><polyline points="{line}" fill="none" stroke="#2ca02c" '
            f'stroke-width="2"/><text x="40" y="{h - 8}">trial {data.hypervolume[0][0]}</text>'
            f'<text x="{w - 10}" y="{h - 8}" text-anchor="end">trial {data.hypervolume[-1][0]}</text>'
            f'<text x="36" y="14" text-anchor="end">{y1:.3f}</text><text x="36" y="{h - 30}" text-anchor="end">0</text>'
            "</svg>")


def heatmap_table(data: ReportData) -> str:
    groups = sorted({g for c in data.front for g in c.ratios})
    head = "".join(f"<th>{html.escape(c.label)}</th>" for c in data.front)
    rows = []
    for g in groups:
        cells = "".join(f'<td style="background:rgba(214,39,40,{c.ratios.get(g, 0.0):.2f})">{c.ratios.get(g, 0.0):.2f}</td>'
                        for c in data.front)
        rows.append(f"<tr><th>{html.escape(g)}</th>{cells}</tr>")
    return f'<table class="heat"><tr><th>group \\ model</th>{head}</tr>{"".join(rows)}</table>'


COLUMNS = ["model", "val acc %", "test acc %", "val drop pt", "median ms", "p90 ms", "speedup", "params", "MMACs",
           "ONNX KB"]


def _row(c: Candidate, base: Candidate) -> list:
    return [c.label, round(100 * c.val_accuracy, 2), None if c.test_accuracy is None else round(100 * c.test_accuracy, 2),
            round(100 * (base.val_accuracy - c.val_accuracy), 2), round(c.latency_ms, 4), round(c.latency_p90_ms, 4),
            round(base.latency_ms / c.latency_ms, 2), c.params, round(c.macs / 1e6, 3), round(c.onnx_bytes / 1024, 1)]


def sortable_table(data: ReportData) -> str:
    head = "".join(f'<th onclick="sortBy(this, {i})">{html.escape(name)} ⇅</th>' for i, name in enumerate(COLUMNS))
    body = "".join("<tr>" + "".join(f"<td>{'-' if v is None else html.escape(str(v))}</td>" for v in _row(c, data.baseline))
                   + "</tr>" for c in [data.baseline, *data.front])
    return f'<table id="models"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


SCRIPT = """
const tip = document.getElementById('tip');
document.querySelectorAll('.pt').forEach(p => {
  p.addEventListener('mousemove', e => { tip.textContent = JSON.stringify(JSON.parse(p.dataset.info), null, 1);
    tip.style.display = 'block'; tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px'; });
  p.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
});
function sortBy(th, col) {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const t = r.cells[col].textContent; const n = parseFloat(t.replace(/[#,]/g, ''));
    return isNaN(n) ? t : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}
"""

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th{background:#f5f5f5;cursor:pointer}
.heat th{cursor:default}#tip{position:absolute;display:none;background:#fff;border:1px solid #888;padding:6px;
font:11px monospace;white-space:pre;pointer-events:none}.pt{cursor:pointer}"""


def render(data: ReportData, title: str) -> str:
    context = {"study": data.study_name, "completed trials": len(data.trials),
               "feasible trials": sum(c.feasible for c in data.trials), "failed trials": data.n_failed,
               "Pareto models": len(data.front), **{f"hw {k}": v for k, v in sorted(data.fingerprint.items())}}
    ctx = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Selection used the validation split; test accuracy was computed once for the Pareto models. Latencies
are measured medians; speedups are against the baseline measured in the same run. Hover a point for its plan;
click a column to sort. Hollow points violate a search constraint; the front is the feasible one.</p>
<h2>Accuracy vs latency</h2>{scatter_svg(data)}
<h2>Pareto models</h2>{sortable_table(data)}
<h2>Pruning ratio per group</h2>{heatmap_table(data)}
<h2>Search progress (normalized hypervolume, val accuracy drop &le; {100 * data.max_drop:.0f} pt)</h2>{progress_svg(data)}
<h2>Hardware and search</h2><table>{ctx}</table>
<div id="tip"></div><script>{SCRIPT}</script></body></html>
"""
