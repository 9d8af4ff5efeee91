"""Gather a search's results from the Optuna study and MLflow alone (so `report` can rerun any time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import optuna

from autoprune.errors import ConfigError
from autoprune.search.fidelity import not_promoted
from autoprune.search.pareto import non_dominated, normalized_hypervolume
from autoprune.search.retime import corrected_metrics, front_numbers, retime_record, retimed_latencies
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
    target: str = ""                     # the hardware profile the front was measured on
    n_candidates: int = 0                # multi-fidelity: candidates scored at rung 0 and not promoted
    predictor: dict = field(default_factory=dict)   # search.screen: the latency predictor's error (screen.py)
    retime: dict = field(default_factory=dict)      # search.retime: what the end-of-search re-timing did (retime.py)

    @property
    def others(self) -> list[Candidate]:
        on_front = {c.trial for c in self.front}
        return [c for c in self.trials if c.trial not in on_front]


TEST_ACCURACY_ATTR = "test_accuracy."   # + trial number: a study user attribute (a finished trial's are frozen)


def predictor_summary(predictor: dict) -> str:
    """One line on a screened search's latency predictor ('' for a search that did not screen)."""
    if not predictor:
        return ""
    return (f"{predictor.get('screened', 0)} candidate(s) left unmeasured; predicted vs measured on {predictor['n']}: "
            f"{100 * predictor['within_10pct']:.0f}% within ±10%, mean |error| {100 * predictor['mean_abs_rel_error']:.1f}%, "
            f"max {100 * predictor['max_abs_rel_error']:.1f}% ({predictor.get('latency_model', '?')})")


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


def study_target(study: optuna.Study) -> str:
    """The profile a study searched on (its own front's target), from the config it stored."""
    hw = (study.user_attrs.get("config") or {}).get("hw")
    return Path(str(hw)).stem if hw else "?"


def _on_target(metrics: dict, target: Optional[str]) -> Optional[dict]:
    """`metrics` with val_accuracy / latency_ms / latency_p90_ms taken from `<target>/...` (search.also_measure);
    None when they were not measured there. Test accuracy is the search's own target's only: dropped."""
    if target is None:
        return metrics
    keys = {"val_accuracy": "val_accuracy", "latency_ms": "latency_ms", "latency_p90_ms": "latency_p90_ms"}
    if any(f"{target}/{k}" not in metrics for k in ("val_accuracy", "latency_ms")):
        return None
    view = {k: v for k, v in metrics.items() if k not in ("test_accuracy", "test_accuracy_torch")}
    for name, key in keys.items():
        view[name] = metrics.get(f"{target}/{key}", metrics[f"{target}/latency_ms"])
    return view


def collect(study: optuna.Study, tracker: Tracker, max_drop: float = 0.1, target: Optional[str] = None) -> ReportData:
    """The report of `study`; `target` (a profile of its search.also_measure) draws the front measured on
    that profile instead of the search's own (None or the search's own profile name)."""
    own = study_target(study)
    target = None if target in (None, "", own) else target
    base_run = baseline_run(tracker, study.study_name)
    m = _on_target(dict(base_run.data.metrics), target)
    if m is None:
        raise ConfigError(f"study '{study.study_name}' was not measured on '{target}': set report.target to one of "
                          f"the profiles its search.also_measure listed (or leave it null for {own})")
    retimed = retimed_latencies(study) if target is None else {}   # search.retime: the own target's only
    if "baseline" in retimed:
        m["latency_ms"] = retimed["baseline"]
    baseline = Candidate(-1, m["val_accuracy"], m["latency_ms"], m["latency_p90_ms"], int(m["params"]),
                         int(m["macs"]), int(m["onnx_bytes"]), m.get("test_accuracy"), 1.0, base_run.info.run_id)
    runs = {int(r.data.tags[TRIAL_NUMBER]): r for r in tracker.trial_runs(study.study_name)}
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    candidates = []
    for t in complete:
        a, run = _on_target(t.user_attrs, target), runs.get(t.number)
        if a is None:   # resumed without this target in search.also_measure
            continue
        if str(t.number) in retimed:
            a = {**a, "latency_ms": retimed[str(t.number)]}
        candidates.append(Candidate(
            trial=t.number, val_accuracy=a["val_accuracy"], latency_ms=a["latency_ms"],
            latency_p90_ms=a["latency_p90_ms"], params=int(a["params"]), macs=int(a["macs"]),
            onnx_bytes=int(a["onnx_bytes"]),
            test_accuracy=run.data.metrics.get("test_accuracy") if run and target is None else None,
            speedup=baseline.latency_ms / a["latency_ms"], run_id=run.info.run_id if run else None,
            feasible=corrected_metrics(t, retimed)[1],
            ratios={k: v["ratio"] for k, v in a["plan"]["groups"].items()},
        ))
    objectives = study.metric_names or ["val_accuracy", "latency_ms"]   # studies of before set_metric_names
    on_front = front_numbers(study) if target is None else \
        non_dominated({c.trial: c.metrics() for c in candidates if c.feasible}, objectives)
    front = sorted((c for c in candidates if c.trial in on_front), key=lambda c: c.latency_ms)
    hv, points = [], []
    for c in candidates:
        if c.feasible:
            points.append(c.metrics())
        hv.append((c.trial, normalized_hypervolume(points, objectives, baseline.metrics(), max_drop)))
    fingerprint = {k[3:]: v for k, v in base_run.data.params.items() if k.startswith("hw.")} if target is None else \
        {"profile": target, "measured": "search.also_measure (the search's own environment)"}
    n_failed = sum(t.state == optuna.trial.TrialState.FAIL for t in all_trials)
    predictor = dict(study.user_attrs.get("predictor_error") or {}) if target is None else {}
    return ReportData(study.study_name, baseline, candidates, front, n_failed, hv, fingerprint, max_drop,
                      target or own, sum(not_promoted(t) for t in all_trials), predictor,
                      retime_record(study) if target is None else {})
