"""PNG figures of a search (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autoprune.report.collect import ReportData  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_png(data: ReportData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    others = data.others
    if others:
        ax.scatter([c.latency_ms for c in others], [100 * c.val_accuracy for c in others], s=18, c="#b0b0b0",
                   label="other trials")
    front = data.front
    ax.plot([c.latency_ms for c in front], [100 * c.val_accuracy for c in front], "-o", c="#d62728", ms=5,
            drawstyle="steps-post", label="Pareto front (val)")
    for c in front:
        ax.annotate(c.label, (c.latency_ms, 100 * c.val_accuracy), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    b = data.baseline
    ax.scatter([b.latency_ms], [100 * b.val_accuracy], marker="*", s=160, c="#1f77b4", label="baseline", zorder=5)
    ax.set_xlabel("median latency (ms, measured)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def heatmap_png(data: ReportData, path: Path) -> Path:
    groups = sorted({g for c in data.front for g in c.ratios})
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * max(1, len(data.front)), 1.0 + 0.35 * max(1, len(groups))), dpi=110)
    grid = [[c.ratios.get(g, 0.0) for c in data.front] for g in groups]
    image = ax.imshow(grid or [[0.0]], cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(data.front)), [c.label for c in data.front], fontsize=7)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.set_title("pruning ratio per group (Pareto models, fastest first)", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)


def progress_png(data: ReportData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3), dpi=110)
    ax.plot([n for n, _ in data.hypervolume], [hv for _, hv in data.hypervolume], "-", c="#2ca02c")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume")
    ax.set_title(f"search progress (normalized hypervolume, accuracy drop <= {100 * data.max_drop:.0f} pt)", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
