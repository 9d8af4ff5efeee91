"""Write a search's report files: pareto.csv / pareto.json, PNG figures and report.html."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from autoprune.report import html, plots
from autoprune.report.collect import Candidate, ReportData
from autoprune.report.recommend import SplitSizes, recommend

COLUMNS = [("model", 9), ("val acc", 8), ("test acc", 8), ("lat ms", 8), ("p90 ms", 8), ("speedup", 7),
           ("params", 9), ("MMACs", 8), ("ONNX KB", 8)]


def _cells(c: Candidate, base: Candidate) -> list[str]:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    return [c.label, pct(c.val_accuracy), pct(c.test_accuracy), f"{c.latency_ms:.3f}", f"{c.latency_p90_ms:.3f}",
            f"{base.latency_ms / c.latency_ms:.2f}x", f"{c.params:,}", f"{c.macs / 1e6:.2f}",
            f"{c.onnx_bytes / 1024:.1f}"]


def format_table(data: ReportData) -> str:
    lines = ["  ".join(name.rjust(w) for name, w in COLUMNS)]
    for c in [data.baseline, *data.front]:
        lines.append("  ".join(cell.rjust(w) for cell, (_, w) in zip(_cells(c, data.baseline), COLUMNS)))
    rec = recommend(data)
    if rec is not None:
        lines += ["", f"recommended: {rec.model.label}, {rec.reason}; register it with", f"  {rec.command}"]
    return "\n".join(lines)


def write_report(data: ReportData, out_dir: Path, sizes: Optional[SplitSizes] = None) -> list[Path]:
    """Write every report file into `out_dir`; returns their paths. `sizes` (the validation and test
    split sizes) adds accuracy intervals and the val–test check."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [data.baseline, *data.front]
    groups = sorted({g for c in rows for g in c.ratios})
    fields = [k for k in asdict(data.baseline) if k != "ratios"]
    csv_path = out_dir / "pareto.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields + [f"ratio.{g}" for g in groups])
        for c in rows:
            d = asdict(c)
            writer.writerow([d[k] for k in fields] + [c.ratios.get(g, 0.0) for g in groups])
    rec = recommend(data)
    json_path = out_dir / "pareto.json"
    json_path.write_text(json.dumps({
        "study": data.study_name, "target": data.target, "baseline": asdict(data.baseline), "front": [asdict(c) for c in data.front],
        "hypervolume": data.hypervolume, "fingerprint": data.fingerprint, "n_complete": len(data.trials),
        "n_failed": data.n_failed, "n_candidates": data.n_candidates, "split_sizes": sizes and asdict(sizes),
        "predictor": data.predictor or None,
        "retime": data.retime or None,
        "recommended": rec and {"trial": rec.model.trial, "reason": rec.reason, "command": rec.command},
    }, indent=2))
    charts = plots.charts(data, rec.model if rec else None, sizes)
    pngs = [chart.save_png(out_dir) for chart in charts]
    html_path = out_dir / "report.html"
    on = f" on {data.target}" if data.target else ""
    html_path.write_text(html.render(data, f"autoprune — {data.study_name}{on}", charts, rec, sizes))
    return [csv_path, json_path, *pngs, html_path]
