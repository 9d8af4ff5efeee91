"""What a search does around its loop, as observers (autoprune.search.loop.Observer):

    MlflowObserver     one nested MLflow run per trial (params, metrics, artifacts, state), runs of lost
                       trials closed KILLED, MLflow reconciled with Optuna (start and end); in a
                       multi-fidelity search a candidate run per rung-0 score, a trial run on promotion
    MlflowProgressObserver  the parent run's hypervolume, completed-trial and candidate counts after each trial
    ProgressObserver   the per-trial log line: result, front size, hypervolume, elapsed, ETA
    HeartbeatObserver  a heartbeat for the running trial (search.heartbeat_s), so other workers can find
                       it stale if this worker dies
    ReportObserver     at the end: Pareto models finished (test accuracy once, MLflow models, pareto
                       tags), the report and the deployment bundle

MLflow trouble (after the tracker's retries) never stops a search: Optuna is the record, and the
reconciliation brings MLflow back in agreement with it (`guarded`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import optuna

from autoprune.candidate import CandidateEvaluator, TrialResult
from autoprune.deploy import write_bundle
from autoprune.hw.artifact import FP32_NAME, artifact_accuracy, artifact_differs
from autoprune.hw.export import ExportedModel
from autoprune.owner import process_owner
from autoprune.plan import PrunePlan
from autoprune.prune import PrunableGroup
from autoprune.recover import evaluate
from autoprune.report import ReportData, collect, write_report
from autoprune.report.collect import record_test_accuracy
from autoprune.report.recommend import SplitSizes
from autoprune.search.fidelity import RUNG_ATTR, RungOutcome
from autoprune.search.loop import (CANDIDATE, COMPLETE, FAILED, INTERRUPTED, LOST, PRUNED, BaseObserver, Budget,
                                   TrialOutcome, one_line)
from autoprune.search.retime import front_numbers
from autoprune.search.workers import OWNER_ATTR, Heartbeat
from autoprune.tasks import DataSplits
from autoprune.track import Tracker
from autoprune.track.mlflow_tracker import (FAIL_REASON, ONNX_MODEL_ID, PARETO, PROMOTED, PROMOTION, RUNG, STATE,
                                            STUDY, TRIAL_NUMBER, TrackingError, TrialRecord)

log = logging.getLogger("autoprune")
TRIAL_ARTIFACTS = ("plan.json", "latency.json", "model.onnx", FP32_NAME, "model.pt")  # what a trial run holds


def guarded(what: str, call: Callable[[], Any]) -> Any:
    """`call()`; MLflow trouble (TrackingError, after the tracker's retries) is logged and gives None."""
    try:
        return call()
    except TrackingError as exc:
        log.warning("MLflow: %s failed (%s); the search goes on, Optuna keeps the result", what, exc)
        return None


def _ms(when) -> Optional[int]:
    """A datetime of Optuna's (local, naive) as MLflow's epoch milliseconds; None stays None."""
    return None if when is None else int(when.timestamp() * 1000)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class MlflowObserver(BaseObserver):
    """The MLflow side of a search: trial runs nested in the parent run, which it does not open or close
    (Search does, around the baseline and the report). `multi_fidelity`: a multi-fidelity search, whose trial
    run starts only when its candidate is promoted."""

    def __init__(self, tracker: Tracker, study_name: str, groups: list[PrunableGroup], output_dir: Path,
                 multi_fidelity: bool = False):
        self.tracker, self.study_name, self.groups, self.output_dir = tracker, study_name, groups, Path(output_dir)
        self.multi_fidelity = multi_fidelity

    # ------------------------------------------------------------------------------------ trials
    def trial_params(self, plan: PrunePlan) -> dict:
        return {f"ratio.{g.name}": plan.ratio(g.name) for g in self.groups} | {"importance": plan.importance}

    def on_trial_start(self, study: optuna.Study, trial: optuna.Trial) -> None:
        if not self.multi_fidelity:
            self._start_trial_run(trial)

    def on_rung_end(self, study: optuna.Study, trial: optuna.Trial, rung: RungOutcome) -> None:
        """The candidate's run (role candidate, finished at once); a promoted one's trial run starts."""
        plan = PrunePlan.from_dict(trial.user_attrs["plan"])
        tags = {STUDY: self.study_name, TRIAL_NUMBER: trial.number, RUNG: rung.rung,
                PROMOTED: str(rung.promoted).lower(), PROMOTION: rung.promotion.reason}
        run_id = guarded("a candidate run", lambda: self.tracker.start_child(
            f"candidate-{trial.number}", "candidate", tags))
        if run_id:
            seconds = {f"seconds_{k}": v for k, v in rung.result.seconds.items()}

            def record() -> None:
                self.tracker.log(run_id, params=self.trial_params(plan), metrics=rung.metrics | seconds)
                self.tracker.end(run_id)
            guarded("candidate results", record)
        if rung.promoted:
            self._start_trial_run(trial)

    def _start_trial_run(self, trial: optuna.Trial) -> None:
        run_id = guarded("start of a trial run", lambda: self.tracker.start_child(
            f"trial-{trial.number}", "trial", {STUDY: self.study_name, TRIAL_NUMBER: trial.number, STATE: "running"},
            _ms(trial.datetime_start)))   # the run spans the trial: Optuna's start and (on_trial_end) end
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
            plan = PrunePlan.from_dict(trial.user_attrs["plan"])
            guarded("trial params", lambda: self.tracker.log(run_id, params=self.trial_params(plan)))

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if outcome.state == CANDIDATE:   # not promoted: its candidate run is all it has
            return
        # Optuna's end of the trial (None while it is still running: a bookkeeping failure, a lost trial)
        end_ms = _ms(study.get_trials(deepcopy=False)[trial.number].datetime_complete) if run_id else None
        if outcome.state == COMPLETE:
            if run_id and not guarded("trial results", lambda: self._log_trial(run_id, outcome, end_ms)):
                self.close_run(run_id, "FINISHED", {"autoprune.logging_error": "results or artifacts incomplete"},
                               end_ms)
        elif outcome.state == PRUNED:
            self.close_run(run_id, "FINISHED", {STATE: "pruned", "autoprune.stop_reason": outcome.reason}, end_ms)
        else:   # failed, interrupted, lost
            status = "FAILED" if outcome.state == FAILED else "KILLED"
            self.close_run(run_id, status, {STATE: "failed", FAIL_REASON: outcome.reason}, end_ms)

    def _log_trial(self, run_id: str, outcome: TrialOutcome, end_ms: Optional[int] = None) -> bool:
        started, result, workdir = time.perf_counter(), outcome.result, outcome.workdir
        assert result is not None and workdir is not None
        repaired = {"autoprune.repaired": json.dumps(result.repaired)} if result.repaired else {}
        self.tracker.log(run_id, metrics=outcome.metrics | {f"seconds_{k}": v for k, v in result.seconds.items()},
                         tags={STATE: "complete", **repaired})
        fp32 = [workdir / FP32_NAME] if (workdir / FP32_NAME).is_file() else []   # int8: model.onnx is the int8 one
        self.tracker.log_artifacts(run_id, [workdir / "plan.json", workdir / "latency.json",
                                            result.onnx_path, *fp32, result.model_path])
        self.tracker.log(run_id, metrics={"seconds_log": time.perf_counter() - started})
        self.tracker.end(run_id, end_ms=end_ms)
        return True

    def close_run(self, run_id: Optional[str], status: str, tags: dict, end_ms: Optional[int] = None) -> None:
        def close(run_id: str) -> None:
            if tags:
                self.tracker.log(run_id, tags=tags)
            self.tracker.end(run_id, status, end_ms)

        if run_id:
            guarded("closing a run", lambda: close(run_id))

    def close_orphaned_runs(self) -> Optional[list[str]]:
        """This study's runs that a killed process left RUNNING, ended KILLED."""
        return guarded("closing orphaned runs", lambda: self.tracker.close_orphaned_runs(self.study_name))

    # ------------------------------------------------------------------------------ reconciling
    def records(self, study: optuna.Study) -> list[TrialRecord]:
        """Every COMPLETE trial of the study as Optuna has it; the files of this process's own trials."""
        records = []
        for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
            attrs, workdir = t.user_attrs, self.output_dir / "trials" / f"{t.number:04d}"
            metrics = {k: v for k, v in attrs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != RUNG_ATTR}
            metrics |= {f"seconds_{k}": v for k, v in attrs.get("seconds", {}).items()}
            own = attrs.get(OWNER_ATTR) == process_owner()
            records.append(TrialRecord(t.number, attrs.get("mlflow_run_id"),
                                       self.trial_params(PrunePlan.from_dict(attrs["plan"])), metrics,
                                       [workdir / n for n in TRIAL_ARTIFACTS if own and (workdir / n).is_file()],
                                       _ms(t.datetime_start), _ms(t.datetime_complete)))
        return records

    def reconcile(self, study: optuna.Study, when: str) -> None:
        """At the start and at the end: MLflow is made to agree with Optuna (see Tracker.reconcile)."""
        done = guarded(f"reconciling with Optuna at the {when}",
                       lambda: self.tracker.reconcile(self.study_name, self.records(study)))
        if done:
            log.warning("MLflow reconciled with Optuna at the %s: trial run(s) %s repaired, %s created, %s flagged "
                        "autoprune.logging_error", when, done.repaired, done.created, done.flagged)


class MlflowProgressObserver(BaseObserver):
    """The parent run's progress metrics after each trial this process ran: hypervolume, completed trials
    (and, in a multi-fidelity search, the candidates scored at rung 0), as the loop computed them."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None:
        parent = self.tracker.parent_id
        if outcome.hypervolume is None or not parent:
            return
        metrics = {"hypervolume": outcome.hypervolume, "completed_trials": outcome.completed}
        if outcome.candidates:
            metrics["candidates"] = outcome.candidates
        guarded("search progress", lambda: self.tracker.log(parent, metrics=metrics, step=trial.number))


class ProgressObserver(BaseObserver):
    """One log line per trial:
    `trial 16/24 (#15) 2.8s | val 98.33% | 0.174 ms (3.48x) | 36,522 params | front 5 | hv 0.760 | 0:51 elapsed, ETA 0:25`
    multi-fidelity (the rung-0 score first; `full 6 of 16 candidates`: fully recovered vs scored at rung 0):
    `trial 16/24 (#15) 0.4s | rung 0 val 91.94% | not promoted: dominated at rung 0 by #9 | full 6 of 16 candidates | front 4 | ...`
    """

    def __init__(self, baseline: dict, budget: Budget, clock: Callable[[], float] = time.perf_counter):
        self.baseline, self.budget, self.clock = baseline, budget, clock
        self.started: float = clock()
        self.finished = 0   # trials this process ran to an end (complete, pruned, failed)

    def on_search_start(self, study: optuna.Study) -> None:
        self.started, self.finished = self.clock(), 0

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None:
        if outcome.state in (INTERRUPTED, LOST):
            return
        self.finished += 1
        elapsed, n_trials = self.clock() - self.started, self.budget.n_trials
        hv = "-" if outcome.hypervolume is None else f"{outcome.hypervolume:.3f}"
        progress = (f"front {len(study.best_trials)} | hv {hv} | {_fmt_time(elapsed)} elapsed, "
                    f"ETA {_fmt_time(elapsed / self.finished * max(0, n_trials - outcome.position))}")
        rung = ""
        if outcome.rung is not None:
            progress = f"full {outcome.completed} of {outcome.candidates} candidates | {progress}"
            rung = f"rung 0 val {100 * outcome.rung.result.val_accuracy:.2f}% | "
        result: Optional[TrialResult] = outcome.result
        if result is None:
            what = {PRUNED: f"stopped early: {outcome.reason}",
                    CANDIDATE: f"not promoted: {outcome.reason}"}.get(outcome.state, f"FAILED: {outcome.reason}")
            took = f"{outcome.seconds:.1f}s | " if outcome.state == CANDIDATE else ""
            log.info("trial %d/%d (#%d) %s%s%s | %s", outcome.position, n_trials, trial.number, took, rung, what,
                     progress)
            return
        log.info("trial %d/%d (#%d) %.1fs | %sval %.2f%% | %.3f ms (%.2fx) | %s params | %s", outcome.position,
                 n_trials, trial.number, outcome.seconds, rung, 100 * result.val_accuracy, result.latency.median_ms,
                 self.baseline["latency_ms"] / result.latency.median_ms, f"{result.params:,}", progress)


class HeartbeatObserver(BaseObserver):
    """Beats for the running trial from its start to its end (nothing without search.heartbeat_s or
    on a storage without heartbeats)."""

    def __init__(self, heartbeat: Heartbeat):
        self.heartbeat = heartbeat
        self._beating: Optional[contextlib.ExitStack] = None

    def on_trial_start(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self._beating = contextlib.ExitStack()
        self._beating.enter_context(self.heartbeat.beating(trial))

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None:
        if outcome.state != LOST and self._beating is not None:
            self._beating.close()
            self._beating = None


class ReportObserver(BaseObserver):
    """At the end of the search: the Pareto models' test accuracy (evaluated once) and MLflow models,
    pareto tags on every trial run, then the report and the bundle (`outcome` afterwards)."""

    def __init__(self, mlflow: MlflowObserver, evaluator: CandidateEvaluator, data: DataSplits, output_dir: Path,
                 split_sizes: SplitSizes, max_drop: float):
        self.mlflow, self.tracker = mlflow, mlflow.tracker
        self.evaluator, self.data, self.report_dir = evaluator, data, Path(output_dir) / "report"
        self.split_sizes, self.max_drop = split_sizes, max_drop
        self.report: Optional[ReportData] = None
        self.files: list[Path] = []

    def on_search_end(self, study: optuna.Study) -> None:
        self.mlflow.reconcile(study, "end")
        numbers = front_numbers(study)   # Optuna's best trials, or after search.retime the re-timed front
        front = {t.number: t for t in study.get_trials(deepcopy=False) if t.number in numbers}
        for run in guarded("listing trial runs", lambda: self.tracker.trial_runs(self.mlflow.study_name)) or []:
            number, run_id = int(run.data.tags[TRIAL_NUMBER]), run.info.run_id
            on_front = number in front
            guarded("pareto tag", lambda: self.tracker.log(run_id, tags={PARETO: str(on_front).lower()}))
            if not on_front or run.info.status != "FINISHED" or "autoprune.logging_error" in run.data.tags:
                continue
            try:
                self._finish_pareto_model(study, run, PrunePlan.from_dict(front[number].user_attrs["plan"]))
            except Exception as exc:  # MLflow trouble: the model keeps its Optuna record and report row
                log.warning("Pareto model #%d: test accuracy / MLflow models skipped (%s)", number, one_line(exc))
        data = collect(study, self.tracker, self.max_drop)
        files = write_report(data, self.report_dir, self.split_sizes)
        parent = self.tracker.parent_id
        if parent:
            guarded("report artifacts", lambda: self.tracker.log_artifacts(parent, files, "report"))
        write_bundle(data, self.tracker, self.report_dir)
        if parent:
            guarded("pareto size", lambda: self.tracker.log(parent, metrics={"pareto_size": len(data.front)}))
        self.report, self.files = data, files

    def _finish_pareto_model(self, study: optuna.Study, run, plan: PrunePlan) -> None:
        """Test accuracy (evaluated once) and MLflow models (logged once) of a Pareto trial's run. The
        model is rebuilt from the baseline and the trial's plan (from Optuna) with the logged weights
        loaded weights-only: nothing read back from the artifact store is executed."""
        run_id = run.info.run_id
        if "test_accuracy" in run.data.metrics and ONNX_MODEL_ID in run.data.tags:
            return
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = self.tracker.download(run_id, "model.onnx", Path(tmp))
            model = self.evaluator.rebuild(plan, self.tracker.download(run_id, "model.pt", Path(tmp)))
            if "test_accuracy" not in run.data.metrics:   # the deployed artifact's (model.onnx), and torch's
                test = evaluate(model, self.data.test)
                profile = self.evaluator.profile
                if artifact_differs(profile):
                    accuracy = artifact_accuracy(ExportedModel(onnx_file, module=model), profile, self.data.test)
                    self.tracker.log(run_id, metrics={"test_accuracy": accuracy, "test_accuracy_torch": test})
                else:
                    accuracy = test
                    self.tracker.log(run_id, metrics={"test_accuracy": accuracy})
                record_test_accuracy(study, int(run.data.tags[TRIAL_NUMBER]), accuracy)
            if ONNX_MODEL_ID not in run.data.tags:
                self.tracker.log_models(run_id, onnx_file, model, example=self.data.val_inputs(4).numpy())


__all__ = ["HeartbeatObserver", "MlflowObserver", "MlflowProgressObserver", "ProgressObserver", "ReportObserver",
           "guarded"]
