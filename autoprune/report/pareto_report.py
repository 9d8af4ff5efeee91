"""Write the Pareto report of a search: pareto.csv, pareto.png and report.html (offline, no CDN)."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    """One row of the report: a trial (or the baseline, trial = -1)."""

    trial: int
    val_accuracy: float
    latency_ms: float
    latency_p90_ms: float
    params: int
    macs: int
    onnx_bytes: int
    test_accuracy: Optional[float] = None
    speedup: Optional[float] = None
    ratios: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "baseline" if self.trial < 0 else f"#{self.trial}"


COLUMNS = [("model", 9), ("val acc", 8), ("test acc", 8), ("lat ms", 8), ("p90 ms", 8), ("speedup", 7),
           ("params", 9), ("MMACs", 8), ("ONNX KB", 8)]


def _cells(c: Candidate) -> list[str]:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    return [c.label, pct(c.val_accuracy), pct(c.test_accuracy), f"{c.latency_ms:.3f}", f"{c.latency_p90_ms:.3f}",
            "-" if c.speedup is None else f"{c.speedup:.2f}x", f"{c.params:,}", f"{c.macs / 1e6:.2f}",
            f"{c.onnx_bytes / 1024:.1f}"]


def format_table(baseline: Candidate, front: Sequence[Candidate]) -> str:
    lines = ["  ".join(name.rjust(w) for name, w in COLUMNS)]
    for c in [baseline, *front]:
        lines.append("  ".join(cell.rjust(w) for cell, (_, w) in zip(_cells(c), COLUMNS)))
    return "\n".join(lines)


def _plot(baseline: Candidate, front: Sequence[Candidate], others: Sequence[Candidate], path: Path) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if others:
        ax.scatter([c.latency_ms for c in others], [100 * c.val_accuracy for c in others], s=18, c="#b0b0b0",
                   label="other trials")
    ordered = sorted(front, key=lambda c: c.latency_ms)
    ax.plot([c.latency_ms for c in ordered], [100 * c.val_accuracy for c in ordered], "-o", c="#d62728",
            ms=5, drawstyle="steps-post", label="Pareto front (val)")
    for c in ordered:
        ax.annotate(c.label, (c.latency_ms, 100 * c.val_accuracy), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.scatter([baseline.latency_ms], [100 * baseline.val_accuracy], marker="*", s=160, c="#1f77b4",
               label="baseline", zorder=5)
    ax.set_xlabel("median latency (ms, measured)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def write_report(out_dir: Path, baseline: Candidate, front: Sequence[Candidate], others: Sequence[Candidate],
                 title: str, context: dict) -> list[Path]:
    """Write the report files into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path, html_path = out_dir / "pareto.csv", out_dir / "pareto.png", out_dir / "report.html"
    rows = [baseline, *front]
    groups = sorted({g for c in rows for g in c.ratios})
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        fields = [k for k in asdict(baseline) if k != "ratios"]
        writer.writerow(fields + [f"ratio.{g}" for g in groups])
        for c in rows:
            data = asdict(c)
            writer.writerow([data[k] for k in fields] + [c.ratios.get(g, 0.0) for g in groups])
    png = _plot(baseline, front, others, png_path)
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(c)) + "</tr>" for c in rows)
    ctx = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items())
    html_path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>{html.escape(title)}</h1>
<img alt="accuracy vs latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Pareto models</h2><table><tr>{header}</tr>{body}</table>
<h2>Context</h2><table>{ctx}</table></body></html>
""")
    return [csv_path, png_path, html_path]
