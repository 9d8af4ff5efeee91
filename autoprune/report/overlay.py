"""Several fronts of one task in one chart and table: `python -m autoprune report report.studies=[a,b]`.

Each entry is a study name, optionally `@<profile>` for the front measured on one of its
search.also_measure profiles (`digits-cpu-ort-1t-1a2b3c4d@cpu-ort-b32`). Every front is labelled with
the target it was measured on. Latency is per sample (latency_ms / the profile's batch size, read from
`<profile>/latency_per_sample_ms` or the profile's batch size), so batch-1 and batch-32 fronts share
an axis. Writes overlay.png, overlay.csv and overlay.html.
"""

from __future__ import annotations

import csv
import html as html_lib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from autoprune.errors import ConfigError
from autoprune.report.collect import ReportData, baseline_run, collect, study_target
from autoprune.report.plots import Chart, _pct
from autoprune.search.study import find_study
from autoprune.track import Tracker

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Front:
    """One study's front on one target, with per-sample latency of its models."""

    data: ReportData
    per_sample: dict          # trial (-1: baseline) -> latency per sample, ms

    @property
    def label(self) -> str:
        return f"{self.data.study_name} on {self.data.target}"


def parse_entry(entry: str) -> tuple[str, Optional[str]]:
    if not isinstance(entry, str) or not entry.strip("@ "):
        raise ConfigError(f"report.studies entry {entry!r}: give study names, optionally study@profile")
    name, _, target = entry.partition("@")
    return name, (target or None)


def _batch_size(tracker: Tracker, data: ReportData, own: bool) -> int:
    """The batch size the front's latencies are per, as the baseline run recorded it (latency_ms /
    latency_per_sample_ms); 1 for searches of before that metric."""
    m = baseline_run(tracker, data.study_name).data.metrics
    prefix = "" if own else f"{data.target}/"
    per_sample, per_batch = m.get(f"{prefix}latency_per_sample_ms"), m.get(f"{prefix}latency_ms")
    return max(1, round(per_batch / per_sample)) if per_sample and per_batch else 1


def collect_fronts(storage, url: str, tracker: Tracker, entries: Sequence[str], max_drop: float) -> list[Front]:
    fronts = []
    for entry in entries:
        name, target = parse_entry(entry)
        study = find_study(storage, url, name)
        data = collect(study, tracker, max_drop, target)
        batch = _batch_size(tracker, data, own=data.target == study_target(study))
        per_sample = {c.trial: c.latency_ms / batch for c in [data.baseline, *data.front]}
        fronts.append(Front(data, per_sample))
    return fronts


def overlay_chart(fronts: Sequence[Front]) -> Chart:
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    for i, f in enumerate(fronts):
        color = COLORS[i % len(COLORS)]
        xs = [f.per_sample[c.trial] for c in f.data.front]
        ys = [100 * c.val_accuracy for c in f.data.front]
        ax.plot(xs, ys, "-o", color=color, ms=5, lw=1.2, drawstyle="steps-post", label=f.label)
        b = f.data.baseline
        ax.plot([f.per_sample[-1]], [100 * b.val_accuracy], linestyle="none", marker="*", ms=12, color=color,
                label=f"baseline on {f.data.target}")
    ax.set_xscale("log")
    ax.set_xlabel("median latency per sample (ms, log scale, each front on its own target)")
    ax.set_ylabel("validation accuracy (each target's deployed artifact)")
    ax.yaxis.set_major_formatter(FuncFormatter(_pct))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{len(fronts)} Pareto fronts", fontsize=10)
    return Chart("overlay", "Pareto fronts per target", fig)


def rows(fronts: Sequence[Front]) -> list[list[str]]:
    out = [["front", "model", "val acc", "test acc", "lat ms", "ms/sample", "speedup", "params"]]
    for f in fronts:
        base = f.data.baseline
        for c in [base, *f.data.front]:
            out.append([f.label, c.label, f"{100 * c.val_accuracy:.2f}",
                        "-" if c.test_accuracy is None else f"{100 * c.test_accuracy:.2f}", f"{c.latency_ms:.4f}",
                        f"{f.per_sample[c.trial]:.4f}", f"{base.latency_ms / c.latency_ms:.2f}x", f"{c.params:,}"])
    return out


def format_overlay(fronts: Sequence[Front]) -> str:
    table = rows(fronts)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in table)


def write_overlay(fronts: Sequence[Front], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "overlay.csv"
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows(fronts))
    chart = overlay_chart(fronts)
    png = chart.save_png(out_dir)
    esc = html_lib.escape
    table = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows(fronts))
    html_path = out_dir / "overlay.html"
    html_path.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>autoprune — fronts per target'
                         f'</title></head><body><h1>Pareto fronts per target</h1>{chart.svg()}'
                         f'<table>{table}</table></body></html>')
    return [csv_path, png, html_path]
