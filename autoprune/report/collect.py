"""Gather a search's results from the Optuna study and MLflow alone (so `report` can rerun any time)."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna

from autoprune.errors import ConfigError
from autoprune.search.pareto import normalized_hypervolume
from autoprune.track import Tracker
from autoprune.track.mlflow_tracker import TRIAL_NUMBER


@dataclass(frozen=True)
class Candidate:
    """One model of the report: a trial, or the baseline (trial = -1)."""

    trial: int
    val_accuracy: float
    latency_ms: float
    latency_p90_ms: float
    params: int
    macs: int
    onnx_bytes: int
    test_accuracy: float | None = None
    speedup: float | None = None
    run_id: str | None = None
    feasible: bool = True          # meets every search.constraints bound
    ratios: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "baseline" if self.trial < 0 else f"#{self.trial}"

    def metrics(self) -> dict[str, float]:
        """The metrics an objective can name (autoprune.search.objectives.DIRECTIONS)."""
        return {"val_accuracy": self.val_accuracy, "latency_ms": self.latency_ms, "params": self.params,
                "macs": self.macs, "onnx_bytes": self.onnx_bytes}


@dataclass(frozen=True)
class ReportData:
    study_name: str
    baseline: Candidate
    trials: list[Candidate]              # every completed trial, in trial order
    front: list[Candidate]               # the non-dominated feasible ones (in the objectives), by latency
    n_failed: int
    hypervolume: list[tuple[int, float]]  # (trial number, normalized HV of all trials up to it)
    fingerprint: dict
    max_drop: float

    @property
    def others(self) -> list[Candidate]:
        on_front = {c.trial for c in self.front}
        return [c for c in self.trials if c.trial not in on_front]


TEST_ACCURACY_ATTR = "test_accuracy."   # + trial number: a study user attribute (a finished trial's are frozen)


def record_test_accuracy(study: optuna.Study, number: int, accuracy: float) -> None:
    """Put a trial's test accuracy in Optuna too (optuna-dashboard, plain Optuna scripts). Optuna refuses
    user attributes on finished trials, so it is the study's attribute `test_accuracy.<trial number>`."""
    study.set_user_attr(f"{TEST_ACCURACY_ATTR}{number}", float(accuracy))


def baseline_run(tracker: Tracker, study_name: str):
    run = tracker.baseline_run(study_name)
    if run is None:
        raise ConfigError(f"no baseline run for study '{study_name}' in MLflow {tracker.uri}: "
                          "use the tracking.uri and tracking.experiment the search ran with")
    return run


def collect(study: optuna.Study, tracker: Tracker, max_drop: float = 0.1) -> ReportData:
    base_run = baseline_run(tracker, study.study_name)
    m = base_run.data.metrics
    baseline = Candidate(-1, m["val_accuracy"], m["latency_ms"], m["latency_p90_ms"], int(m["params"]),
                         int(m["macs"]), int(m["onnx_bytes"]), m.get("test_accuracy"), 1.0, base_run.info.run_id)
    runs = {int(r.data.tags[TRIAL_NUMBER]): r for r in tracker.trial_runs(study.study_name)}
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    candidates = []
    for t in complete:
        a, run = t.user_attrs, runs.get(t.number)
        candidates.append(Candidate(
            trial=t.number, val_accuracy=a["val_accuracy"], latency_ms=a["latency_ms"],
            latency_p90_ms=a["latency_p90_ms"], params=int(a["params"]), macs=int(a["macs"]),
            onnx_bytes=int(a["onnx_bytes"]), test_accuracy=run.data.metrics.get("test_accuracy") if run else None,
            speedup=baseline.latency_ms / a["latency_ms"], run_id=run.info.run_id if run else None,
            feasible=all(v <= 0 for v in t.constraints.values()),
            ratios={k: v["ratio"] for k, v in a["plan"]["groups"].items()},
        ))
    front_numbers = {t.number for t in study.best_trials}
    front = sorted((c for c in candidates if c.trial in front_numbers), key=lambda c: c.latency_ms)
    objectives = study.metric_names or ["val_accuracy", "latency_ms"]   # studies of before set_metric_names
    hv, points = [], []
    for c in candidates:
        if c.feasible:
            points.append(c.metrics())
        hv.append((c.trial, normalized_hypervolume(points, objectives, baseline.metrics(), max_drop)))
    fingerprint = {k[3:]: v for k, v in base_run.data.params.items() if k.startswith("hw.")}
    n_failed = sum(t.state == optuna.trial.TrialState.FAIL for t in all_trials)
    return ReportData(study.study_name, baseline, candidates, front, n_failed, hv, fingerprint, max_drop)
