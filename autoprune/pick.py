"""`mode=pick`: choose the model to deploy, register it in the MLflow Model Registry, export its ONNX.

Rule: among all completed trials that meet every given constraint (latency <= pick.max_latency_ms,
val accuracy >= pick.min_accuracy, params <= pick.max_params), take the highest validation accuracy;
ties go to the lower latency. Selection never looks at test accuracy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


from autoprune.config import AppConfig
from autoprune.errors import AutopruneError
from autoprune.report.collect import Candidate, collect
from autoprune.search.existing import load_existing
from autoprune.track.mlflow_tracker import ONNX_MODEL_ID

log = logging.getLogger("autoprune")


@dataclass(frozen=True)
class PickRule:
    max_latency_ms: Optional[float] = None
    min_accuracy: Optional[float] = None
    max_params: Optional[int] = None

    def violation(self, c: Candidate) -> float:
        """0 when feasible; otherwise the sum of relative violations (for 'nearest' listings)."""
        v = 0.0
        if self.max_latency_ms is not None and c.latency_ms > self.max_latency_ms:
            v += c.latency_ms / self.max_latency_ms - 1
        if self.min_accuracy is not None and c.val_accuracy < self.min_accuracy:
            v += (self.min_accuracy - c.val_accuracy) / max(self.min_accuracy, 1e-9)
        if self.max_params is not None and c.params > self.max_params:
            v += c.params / self.max_params - 1
        return v

    def describe(self) -> str:
        parts = [f"pick.max_latency_ms={self.max_latency_ms}" if self.max_latency_ms is not None else None,
                 f"pick.min_accuracy={self.min_accuracy}" if self.min_accuracy is not None else None,
                 f"pick.max_params={self.max_params}" if self.max_params is not None else None]
        return " and ".join(p for p in parts if p) or "no constraint"


class NoFeasibleModel(AutopruneError):
    pass


def choose(candidates: Sequence[Candidate], rule: PickRule) -> tuple[Candidate, list[Candidate]]:
    """(chosen, feasible) per the module's rule; raises NoFeasibleModel listing the nearest models."""
    feasible = [c for c in candidates if rule.violation(c) == 0.0]
    if not feasible:
        nearest = sorted(candidates, key=rule.violation)[:3]
        listing = "; ".join(f"{c.label} (val {100 * c.val_accuracy:.2f}%, {c.latency_ms:.3f} ms, {c.params:,} params)"
                            for c in nearest)
        raise NoFeasibleModel(f"no model meets {rule.describe()}; nearest: {listing or 'none (no completed trial)'}"
                              " — relax a constraint or run more trials")
    return min(feasible, key=lambda c: (-c.val_accuracy, c.latency_ms)), feasible


@dataclass(frozen=True)
class PickOutcome:
    chosen: Candidate
    n_feasible: int
    model_name: str
    version: str
    alias: str
    onnx_path: Path


def run_pick(cfg: AppConfig) -> PickOutcome:
    study, tracker = load_existing(cfg)
    data = collect(study, tracker, cfg.search.hv_max_drop)
    p = cfg.pick
    rule = PickRule(p.max_latency_ms, p.min_accuracy, p.max_params)
    chosen, feasible = choose(data.trials, rule)
    log.info("picked %s: highest val accuracy (%.2f%%) among %d of %d models meeting %s; %.3f ms (%.2fx), %s params",
             chosen.label, 100 * chosen.val_accuracy, len(feasible), len(data.trials), rule.describe(),
             chosen.latency_ms, data.baseline.latency_ms / chosen.latency_ms, f"{chosen.params:,}")
    tags = tracker.run_tags(chosen.run_id)
    export = Path(p.export).expanduser()
    export.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(export)
    # The deployed file and the alias change together: the new ONNX is staged next to the export, the
    # version registered and the alias moved, and only then is the file renamed into place (one step).
    staged = export.with_name(f".{export.name}.{os.getpid()}.staged")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = tracker.download(chosen.run_id, "model.onnx", Path(tmp))
            if ONNX_MODEL_ID in tags:
                model_id = tags[ONNX_MODEL_ID]
            else:  # not a Pareto model: log its ONNX model now (the deployed artifact; nothing is unpickled)
                model_id = tracker.log_models(chosen.run_id, onnx_file)[ONNX_MODEL_ID]
            shutil.copyfile(onnx_file, staged)
        name = p.model_name or study.study_name
        version = tracker.register(model_id, name, p.alias, {"autoprune.trial_number": str(chosen.trial)})
        os.replace(staged, export)
    finally:
        staged.unlink(missing_ok=True)
    return PickOutcome(chosen, len(feasible), name, version, p.alias, export)


def _remove_stale_staging(export: Path) -> None:
    """What a killed pick staged next to `export` (its process is gone)."""
    for stale in export.parent.glob(f".{export.name}.*.staged"):
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
