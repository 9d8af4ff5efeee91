"""Predictor screening: where measuring is expensive (a TensorRT engine build, a remote agent), a
fine-tuned candidate is measured only if its predicted latency could put it on the measured front.

    search.screen.mode   auto (on for runtime tensorrt and remote-agent profiles) | always | never
    search.screen.margin 0.1: a candidate is measured unless it is dominated by the measured front even
                         with its predicted latency lowered by this fraction
    search.screen.table  a latency table (`python -m autoprune calibrate`); null: the MACs model

Each candidate is pruned, fine-tuned and scored as always; only the latency measurement waits for the
decision (the architecture is final before fine-tuning, so measuring the fine-tuned model times the same
graph). The prediction is `scale * raw + offset` of the latency model (`LatencyTable` or `MacsModel`),
with the correction refitted before every prediction to every measurement so far: the baseline's and
every measured trial of the study (so other workers' and a resumed study's too).

What is recorded:
- a measured trial: user attrs `latency_source=measured`, `latency_predicted_ms` (the prediction made
  before it was measured) and `latency_prediction_error` ((predicted - measured) / measured), also as
  MLflow metrics, with the run tag `autoprune.latency_source=measured`;
- a screened-out trial: told PRUNED (Optuna then keeps it out of `best_trials`, the front, the report,
  `pick` and the test-split evaluation, which read COMPLETE trials only; TPE counts it with the worse
  trials), with user attrs `latency_source=predicted`, `latency_predicted_ms`, its scores
  (`val_accuracy`, `macs`, `params`, `onnx_bytes`) and `screen_dominated_by` (the measured trial that
  dominates it); its MLflow run gets those metrics, `autoprune.latency_source=predicted` and the
  stop reason;
- at the end of the search: the predictor's error over the measured trials (log line, the parent run's
  metrics `predictor_mean_abs_rel_error`, `predictor_within_10pct`, `screened_trials`, and the study's
  user attr `predictor_error`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol, Sequence

import optuna

from autoprune.candidate import CandidateEvaluator, TrialResult
from autoprune.hw.predictor import LatencyTable, MacsModel, PredictorReport, error_report
from autoprune.hw.stats import LatencyStats
from autoprune.plan import PrunePlan
from autoprune.search.allocate import LatencyModel
from autoprune.search.loop import COMPLETE, PRUNED, BaseObserver, Monitor, TrialOutcome
from autoprune.search.objectives import DIRECTIONS, Objectives
from autoprune.search.observers import guarded
from autoprune.track import Tracker

log = logging.getLogger("autoprune")

SOURCE_ATTR = "latency_source"            # user attr: measured | predicted
SOURCE_TAG = "autoprune.latency_source"   # the same, on the trial's MLflow run
MEASURED, PREDICTED = "measured", "predicted"
SCORES = ("val_accuracy", "macs", "params", "onnx_bytes")   # what a screened-out trial still records


class FittedLatencyModel(LatencyModel, Protocol):
    """A latency model whose correction can be refitted to measurements (LatencyTable, MacsModel)."""

    def fit(self, widths: Sequence[Mapping[str, int]], measured_ms: Sequence[float]) -> object: ...

    def group_widths(self, plan: PrunePlan) -> dict[str, int]: ...


class Screened(optuna.TrialPruned):
    """A candidate left unmeasured: dominated by the measured front even at its optimistic predicted latency."""


class LatencyScreen(BaseObserver):
    """Predicts candidates' latency, decides which are measured (`measure_or_skip`), and records it.

    An Observer too: it learns the running trial at its start (so the decision, made inside the
    evaluation, is recorded on it before Optuna is told) and tags its MLflow run at its end; put it
    before the MlflowObserver, which closes the run."""

    def __init__(self, predictor: FittedLatencyModel, objectives: Objectives, baseline: Mapping[str, float], margin: float,
                 tracker: Optional[Tracker] = None, kind: str = "MACs"):
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"screening margin {margin} is outside [0, 1)")
        self.predictor, self.objectives, self.baseline = predictor, objectives, dict(baseline)
        self.margin, self.tracker, self.kind = margin, tracker, kind
        self.study: Optional[optuna.Study] = None
        self.trial: Optional[optuna.Trial] = None
        self.fits = 0   # how many times the correction was refitted

    # ---------------------------------------------------------------------------------- the model
    def widths(self, plan: PrunePlan) -> dict[str, int]:
        """Each group's width under `plan` (mask patterns leave the widths alone)."""
        return self.predictor.group_widths(plan)

    def measurements(self) -> tuple[list[dict[str, int]], list[float]]:
        """The baseline's and every measured trial's (widths, measured ms) in the study."""
        widths: list[dict[str, int]] = [{}]
        measured = [float(self.baseline["latency_ms"])]
        if self.study is not None:
            for t in self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
                if "latency_ms" in t.user_attrs and "plan" in t.user_attrs:
                    widths.append(self.widths(PrunePlan.from_dict(t.user_attrs["plan"])))
                    measured.append(float(t.user_attrs["latency_ms"]))
        return widths, measured

    def refit(self) -> None:
        """The correction fitted to every measurement so far (`fit` of the table or the MACs model)."""
        self.predictor.fit(*self.measurements())
        self.fits += 1

    def predict(self, plan: PrunePlan) -> float:
        """`plan`'s predicted latency (ms), by the correction refitted to every measurement so far."""
        self.refit()
        return float(self.predictor.predict_widths(self.widths(plan)))

    # ---------------------------------------------------------------------------------- deciding
    def dominating(self, metrics: Mapping[str, float]) -> Optional[int]:
        """The number of a feasible measured trial that dominates `metrics` in the objectives, else None."""
        if self.study is None:
            return None
        names = self.objectives.names
        sign = {n: -1.0 if DIRECTIONS[n] == "maximize" else 1.0 for n in names}
        mine = [sign[n] * float(metrics[n]) for n in names]
        for t in self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
            if any(v > 0 for v in t.constraints.values()) or any(n not in t.user_attrs for n in names):
                continue
            theirs = [sign[n] * float(t.user_attrs[n]) for n in names]
            if all(a <= b for a, b in zip(theirs, mine)) and theirs != mine:
                return t.number
        return None

    def measure_or_skip(self, plan: PrunePlan, metrics: Mapping[str, float], predicted_ms: float,
                        measure: Callable[[], LatencyStats]) -> LatencyStats:
        """`measure()` unless the candidate (its scores `metrics`, its latency `predicted_ms` lowered by the
        margin) is dominated by a measured trial: then it is recorded as predicted and Screened is raised."""
        optimistic = predicted_ms * (1.0 - self.margin)
        by = self.dominating({**metrics, "latency_ms": optimistic})
        trial = self.trial
        if by is not None:
            if trial is not None:
                for key in SCORES:
                    if key in metrics:
                        trial.set_user_attr(key, float(metrics[key]))
                trial.set_user_attr("latency_predicted_ms", float(predicted_ms))
                trial.set_user_attr("screen_dominated_by", by)
                trial.set_user_attr(SOURCE_ATTR, PREDICTED)
            raise Screened(f"screened: predicted {predicted_ms:.4g} ms; measured trial #{by} dominates it even at "
                           f"{optimistic:.4g} ms (search.screen.margin={self.margin:g})")
        if trial is not None:
            trial.set_user_attr(SOURCE_ATTR, MEASURED)
        return measure()

    # ---------------------------------------------------------------------------------- observing
    def on_search_start(self, study: optuna.Study) -> None:
        self.study = study
        log.info("screening: latency predicted by %s (refitted to each measurement); a candidate is measured "
                 "unless the measured front dominates it at its predicted latency - %.0f %%", self.kind,
                 100 * self.margin)

    def on_trial_start(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.study, self.trial = study, trial

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None:
        self.trial = None
        attrs = trial.user_attrs
        run_id, source, tracker = attrs.get("mlflow_run_id"), attrs.get(SOURCE_ATTR), self.tracker
        if not (tracker and run_id and source) or outcome.state not in (COMPLETE, PRUNED):
            return
        metrics = {}
        if source == PREDICTED:
            metrics = {k: float(attrs[k]) for k in (*SCORES, "latency_predicted_ms") if k in attrs}
        guarded("screening record", lambda: tracker.log(run_id, metrics=metrics, tags={SOURCE_TAG: source}))

    def on_search_end(self, study: optuna.Study) -> None:
        report = predictor_error(study)
        screened = sum(t.user_attrs.get(SOURCE_ATTR) == PREDICTED for t in study.get_trials(deepcopy=False))
        if report is None:
            log.info("screening: %d candidate(s) left unmeasured; no measured trial has a prediction", screened)
            return
        log.info("screening: %d candidate(s) left unmeasured, %d measured | %s", screened, report.n, report.summary())
        study.set_user_attr("predictor_error", {"n": report.n, "within_10pct": report.share_within_10pct,
                                                "mean_abs_rel_error": report.mean_abs_rel_error,
                                                "max_abs_rel_error": report.max_abs_rel_error,
                                                "screened": screened, "latency_model": self.kind})
        tracker = self.tracker
        parent = tracker.parent_id if tracker else None
        if tracker and parent:
            guarded("predictor error", lambda: tracker.log(parent, metrics={
                "predictor_mean_abs_rel_error": report.mean_abs_rel_error,
                "predictor_within_10pct": report.share_within_10pct, "screened_trials": screened}))


def predictor_error(study: optuna.Study) -> Optional[PredictorReport]:
    """Predicted vs measured latency over the study's measured trials that were predicted first (None: none)."""
    pairs = [(t.user_attrs["latency_predicted_ms"], t.user_attrs["latency_ms"])
             for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
             if "latency_predicted_ms" in t.user_attrs and "latency_ms" in t.user_attrs]
    if not pairs:
        return None
    return error_report([p for p, _ in pairs], [m for _, m in pairs])


class ScreenedEvaluator:
    """The search's CandidateEvaluator with screening: `evaluate` decides after scoring whether to measure."""

    def __init__(self, evaluator: CandidateEvaluator, screen: LatencyScreen):
        self.evaluator, self.screen = evaluator, screen

    def evaluate(self, plan: PrunePlan, workdir: Path, monitor: Optional[Monitor] = None) -> TrialResult:
        return self.evaluator.evaluate(plan, workdir, monitor, screen=self.screen)


def build_screen(screen_cfg, ctx, objectives: Objectives, baseline: Mapping[str, float],
                 tracker: Optional[Tracker]) -> Optional[LatencyScreen]:
    """The screen of a search (`search.screen`, a ScreenConfig) on `ctx` (a SearchContext), None when it
    does not screen."""
    if not screen_cfg.active(ctx.profile):
        return None
    from autoprune.search.allocate import latency_model

    evaluator = ctx.evaluator
    predictor = latency_model(evaluator.start_model(), evaluator.pruner, ctx.profile, screen_cfg.table)
    assert isinstance(predictor, (LatencyTable, MacsModel))
    kind = f"latency table {screen_cfg.table}" if screen_cfg.table else "MACs"
    return LatencyScreen(predictor, objectives, baseline, screen_cfg.margin, tracker, kind)


__all__ = ["LatencyScreen", "Screened", "ScreenedEvaluator", "build_screen", "predictor_error"]
