"""`mode=pick`: choose the model to deploy, register it in the MLflow Model Registry, export its ONNX.

Rule: among all completed trials that meet every given constraint (latency <= pick.max_latency_ms,
val accuracy >= pick.min_accuracy, params <= pick.max_params), take the highest validation accuracy;
ties go to the lower latency. Selection never looks at test accuracy.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import mlflow
from omegaconf import DictConfig

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


def run_pick(cfg: DictConfig) -> PickOutcome:
    study, tracker = load_existing(cfg)
    data = collect(study, tracker, float(cfg.search.hv_max_drop))
    p = cfg.pick
    rule = PickRule(p.max_latency_ms, p.min_accuracy, p.max_params)
    chosen, feasible = choose(data.trials, rule)
    log.info("picked %s: highest val accuracy (%.2f%%) among %d of %d models meeting %s; %.3f ms (%.2fx), %s params",
             chosen.label, 100 * chosen.val_accuracy, len(feasible), len(data.trials), rule.describe(),
             chosen.latency_ms, data.baseline.latency_ms / chosen.latency_ms, f"{chosen.params:,}")
    run = tracker.client.get_run(chosen.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = tracker.download(chosen.run_id, "model.onnx", Path(tmp))
        if ONNX_MODEL_ID in run.data.tags:
            model_id = run.data.tags[ONNX_MODEL_ID]
        else:  # not a Pareto model: log its MLflow models now
            model_id = tracker.log_models(chosen.run_id, onnx_file,
                                          tracker.download(chosen.run_id, "model.pt", Path(tmp)))[ONNX_MODEL_ID]
        export = Path(p.export).expanduser()
        export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_file, export)
    name = p.model_name or study.study_name
    mlflow.set_tracking_uri(tracker.uri)
    version = mlflow.register_model(f"models:/{model_id}", name, tags={"autoprune.trial_number": str(chosen.trial)})
    tracker.client.set_registered_model_alias(name, p.alias, version.version)
    return PickOutcome(chosen, len(feasible), name, str(version.version), p.alias, export)
