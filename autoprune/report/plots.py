"""The report's figures, each drawn once with matplotlib and saved twice: a PNG file and an inline SVG
for report.html (text kept as text, so the page stays searchable; no CDN, works offline).

Points of the accuracy-vs-latency chart carry `id="pt-<trial>"` (`pt-baseline` for the baseline) in
the SVG, so the page can show a point's plan on hover.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from autoprune.report.collect import Candidate, ReportData
from autoprune.report.recommend import SplitSizes, interval

DPI = 110
FRONT, OTHER, BASE, REC = "#d62728", "#9a9a9a", "#1f77b4", "#2ca02c"
_SVG_RC: dict = {"svg.fonttype": "none", "svg.hashsalt": "autoprune"}


@dataclass
class Chart:
    name: str       # file stem of the PNG: pareto, heatmap, progress
    title: str
    figure: Figure

    def save_png(self, folder: Path) -> Path:
        path = Path(folder) / f"{self.name}.png"
        self.figure.savefig(path, dpi=DPI)
        return path

    def svg(self) -> str:
        """The figure as an <svg> element to inline in HTML (no XML prolog; CSS shrinks it to fit the page)."""
        buffer = io.StringIO()
        with matplotlib.rc_context(_SVG_RC):
            self.figure.savefig(buffer, format="svg")
        text = buffer.getvalue()
        text = text[text.index("<svg"):]
        # inline SVG in HTML needs no namespaces, and the metadata only names matplotlib's website
        text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S))
        return text.replace("<svg ", f'<svg id="fig-{self.name}" class="figure" ', 1)


def _pct(value: float, _pos=None) -> str:
    return f"{value:g}%"


def pareto_chart(data: ReportData, recommended: Optional[Candidate] = None,
                 sizes: Optional[SplitSizes] = None) -> Chart:
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    on_front = {c.trial for c in data.front}
    seen = set()

    def point(c: Candidate, label: str, **style) -> None:
        ax.plot([c.latency_ms], [100 * c.val_accuracy], linestyle="none", gid=f"pt-{c.label.lstrip('#')}",
                label=None if label in seen else label, **style)
        seen.add(label)

    for c in data.trials:
        if c.trial in on_front:
            continue
        if c.feasible:
            point(c, "other trials", marker="o", ms=5, color=OTHER)
        else:
            point(c, "violates a search constraint", marker="o", ms=5, mfc="none", color=OTHER)
    front = data.front
    if front:
        ax.plot([c.latency_ms for c in front], [100 * c.val_accuracy for c in front], color=FRONT, lw=1.2,
                drawstyle="steps-post", label="Pareto front (validation)")
        if sizes is not None:
            lows, highs = zip(*(interval(c.val_accuracy, sizes.val) for c in front))
            ax.errorbar([c.latency_ms for c in front], [100 * c.val_accuracy for c in front],
                        yerr=[[100 * (c.val_accuracy - lo) for c, lo in zip(front, lows)],
                              [100 * (hi - c.val_accuracy) for c, hi in zip(front, highs)]],
                        fmt="none", ecolor=FRONT, alpha=0.35, lw=1, capsize=2, label="95% interval (Wilson)")
        for c in front:
            point(c, "Pareto models", marker="o", ms=6, color=FRONT)
            ax.annotate(c.label, (c.latency_ms, 100 * c.val_accuracy), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    b = data.baseline
    point(b, "baseline (unpruned)", marker="*", ms=14, color=BASE, zorder=5)
    if recommended is not None:
        ax.plot([recommended.latency_ms], [100 * recommended.val_accuracy], linestyle="none", marker="o", ms=15,
                mfc="none", mec=REC, mew=2, label=f"recommended ({recommended.label})", zorder=6)
    ax.set_xlabel(f"median latency (ms, measured on {data.target or 'the target profile'})")
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(FuncFormatter(_pct))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.set_xlim(left=0)
    ax.margins(x=0.08, y=0.08)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"accuracy vs latency: {len(data.trials)} trials, {len(front)} on the Pareto front", fontsize=10)
    return Chart("pareto", "Accuracy vs latency", fig)


def heatmap_chart(data: ReportData) -> Chart:
    """The plans of the Pareto models: pruning ratio per group, fastest model first."""
    groups = sorted({g for c in data.front for g in c.ratios})
    models = data.front
    label_in = 0.055 * max((len(g) for g in groups), default=0)   # group names at 7 pt: ~0.055 inch a character
    fig = Figure(figsize=(1.9 + label_in + 0.75 * max(1, len(models)), 1.3 + 0.32 * max(1, len(groups))),
                 layout="constrained")
    ax = fig.add_subplot()
    grid = [[c.ratios.get(g, 0.0) for c in models] for g in groups] or [[0.0]]
    image = ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for row, g in enumerate(groups):
        for col, c in enumerate(models):
            ratio = c.ratios.get(g, 0.0)
            ax.text(col, row, f"{ratio:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if ratio > 0.6 else "black")
    ax.set_xticks(range(len(models)), [c.label for c in models], fontsize=8)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.set_xlabel("Pareto model (fastest first)")
    ax.set_ylabel("group")
    fig.colorbar(image, ax=ax, fraction=0.05, label="pruning ratio (share of channels removed)")
    return Chart("heatmap", "Pruning ratio per group", fig)


def progress_chart(data: ReportData) -> Chart:
    fig = Figure(figsize=(8.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    trials, values = [n for n, _ in data.hypervolume], [v for _, v in data.hypervolume]
    ax.plot(trials, values, "-o", color=REC, ms=3, label="normalized hypervolume of trials so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("normalized hypervolume")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    ax.set_ylim(0, max([*values, 0.0]) * 1.15 or 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"search progress (0: no faster model within {100 * data.max_drop:g} points of the baseline's "
                 "val accuracy; 1: zero latency at no loss)", fontsize=8)
    return Chart("progress", "Search progress", fig)


def charts(data: ReportData, recommended: Optional[Candidate] = None,
           sizes: Optional[SplitSizes] = None) -> list[Chart]:
    return [pareto_chart(data, recommended, sizes), heatmap_chart(data), progress_chart(data)]
