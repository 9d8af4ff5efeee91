"""Re-time a finished search's Pareto models side by side: was any of them mis-measured during the search?

During a search each model is timed once, at its own moment; a busy machine at that moment (another
worker, a backup, a browser) makes that one number wrong, and the front and the recommendation follow it.
`recheck` times the front's ONNX files again, every model once per round in shuffled order, and compares
each model's median with what the search measured. A whole machine that got faster or slower since moves
every model alike, so each model is judged against the median ratio of all of them (the drift): a model
whose ratio differs from the drift by more than `tolerance` is flagged.

    python -m autoprune report report.recheck_rounds=3
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from autoprune.errors import ConfigError
from autoprune.hw import Measurer, get_backend, load_profile
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.profile import HardwareProfile

TOLERANCE = 0.1


@dataclass(frozen=True)
class Retimed:
    label: str
    search_ms: float      # what the search measured
    retimed_ms: float     # median of the rounds here
    drift: float          # median retimed / search ratio over all models
    tolerance: float

    @property
    def ratio(self) -> float:
        return self.retimed_ms / self.search_ms

    @property
    def off_by(self) -> float:
        """How far this model's ratio is from the drift (0.5: it runs 1.5x what the drift predicts)."""
        return self.ratio / self.drift - 1

    @property
    def flagged(self) -> bool:
        return abs(self.off_by) > self.tolerance


def recheck(models: Sequence[tuple[str, ModelFiles, float]], profile: HardwareProfile, rounds: int = 3, seed: int = 0,
            tolerance: float = TOLERANCE, backend: Optional[Measurer] = None) -> list[Retimed]:
    """`models` are (label, ONNX file or ExportedModel, latency the search measured in ms); each is timed
    `rounds` times with the profile's rules (by `backend`, default the profile's own), interleaved in shuffled
    order. Runtime torch times modules: every model must be an ExportedModel with its module. Returns one
    Retimed per model, in the given order."""
    if rounds < 1:
        raise ConfigError(f"report.recheck_rounds={rounds}: use 1 or more rounds (3 is a good start)")
    if profile.runtime == "torch" and any(as_exported(m).module is None for _, m, _ in models):
        raise ConfigError(f"profile '{profile.name}' times the PyTorch module, not an ONNX file: re-time its front "
                          "with a search on that profile, or recheck an ONNX Runtime / TensorRT profile")
    backend = backend or get_backend(profile)
    times: dict[int, list[float]] = {i: [] for i in range(len(models))}
    order, rng = list(times), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            times[i].append(backend.measure(as_exported(models[i][1]), profile, fresh=True).median_ms)
    retimed = [float(np.median(times[i])) for i in range(len(models))]
    drift = float(np.median([r / ms for r, (_, _, ms) in zip(retimed, models)])) if models else 1.0
    return [Retimed(label, ms, r, drift, tolerance) for r, (label, _, ms) in zip(retimed, models)]


def target_profile(hw: str, target: str) -> HardwareProfile:
    """The profile a front was measured on: `hw` (this invocation's) when it names that profile (a file
    keeps its stem), else the shipped profile called `target`."""
    try:
        return load_profile(hw if Path(str(hw)).stem == target else target)
    except ConfigError as exc:   # unknown name, or a bad file (ProfileError)
        raise ConfigError(f"cannot re-time on '{target}', the profile the front was measured on: pass that "
                          f"profile as hw=<its yaml> ({exc})") from None


def format_recheck(rows: Sequence[Retimed]) -> str:
    if not rows:
        return "recheck: no Pareto model with an ONNX file to re-time"
    lines = [f"re-timed side by side (drift: the machine runs {rows[0].drift:.3f}x what the search measured, "
             f"median over models; flagged beyond ±{100 * rows[0].tolerance:.0f} %):",
             f"{'model':>9} {'search ms':>10} {'now ms':>9} {'ratio':>7} {'vs drift':>9}"]
    for r in rows:
        flag = "  <- mis-timed in the search?" if r.flagged else ""
        lines.append(f"{r.label:>9} {r.search_ms:10.3f} {r.retimed_ms:9.3f} {r.ratio:7.3f} {100 * r.off_by:+8.1f}%{flag}")
    return "\n".join(lines)


def write_recheck(rows: Sequence[Retimed], path: Path) -> Path:
    header = "model,search_ms,retimed_ms,ratio,drift,off_by,flagged\n"
    body = "".join(f"{r.label},{r.search_ms:.6g},{r.retimed_ms:.6g},{r.ratio:.6g},{r.drift:.6g},{r.off_by:.6g},"
                   f"{str(r.flagged).lower()}\n" for r in rows)
    path.write_text(header + body)
    return path
