"""`python -m autoprune` (mode=search): build everything once, run N trials, report the Pareto front.

Data flows one way: config → SearchContext (task, baseline, profile, pruner) → trials (Optuna ask →
candidate → Optuna tell → MLflow) → Pareto set → test-split evaluation → report.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch_pruning as tp

from autoprune.baseline import near_chance
from autoprune.config import AppConfig
from autoprune.context import SearchContext, check_inputs, finish_context
from autoprune.hw import ExportedModel, LatencyStats, export_model, load_profile
from autoprune.hw.artifact import fp32_source
from autoprune.hw.predictor import LatencyTable
from autoprune.plan import PrunePlan
from autoprune.recover import evaluate
from autoprune.report import ReportData, format_table
from autoprune.report.collect import predictor_summary
from autoprune.report.recommend import SPLIT_SIZES, SplitSizes
from autoprune.rung0 import Rung0Config, Rung0Scorer
from autoprune.search.allocate import allocation_inputs, warm_start_plans
from autoprune.search.checks import check_search
from autoprune.search.early_stop import ParetoStopper
from autoprune.search.fidelity import PromotionRule, Rung0Step
from autoprune.search.fingerprint import ATTR, check_fingerprint, stored_fingerprint, study_fingerprint
from autoprune.search.loop import Budget, Observer, SearchLoop, TrialOutcome
from autoprune.search.objectives import Objectives
from autoprune.search.observers import (HeartbeatObserver, MlflowObserver, MlflowProgressObserver, ProgressObserver,
                                          ReportObserver, guarded)
from autoprune.search.retime import RetimeObserver, retime_summary
from autoprune.search.screen import LatencyScreen, ScreenedEvaluator, build_screen
from autoprune.search.searchers import SearcherSettings, make_sampler, searcher_class
from autoprune.search.study import open_storage, open_study
from autoprune.targets import measure_targets
from autoprune.search.workers import Heartbeat, StaleTrialHandler, fail_orphaned_trials, shared_lock
from autoprune.track import Tracker
from autoprune.track.mlflow_tracker import STUDY

log = logging.getLogger("autoprune")
TARGET_TAG = "autoprune.target"   # on the parent run: the profile its front belongs to (and search.also_measure)


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str | None   # None: MLflow was unreachable (the search went on without it)
    report: ReportData
    report_files: list[Path]

    @property
    def study_name(self) -> str:
        return self.report.study_name


@dataclass(frozen=True)
class _Records:
    """Where a search records: the Optuna storage (with its stale-trial handler) and the MLflow tracker."""

    storage: optuna.storages.BaseStorage
    tracker: Tracker


def _open_records(cfg: AppConfig, fingerprint: dict[str, str], stale: StaleTrialHandler) -> _Records:
    """After the cheap checks, before the baseline trains: a bad URL fails fast."""
    storage = open_storage(cfg.search.storage, cfg.search.heartbeat_s, stale)
    if cfg.search.study_name:  # a named study may hold another search's trials: refuse to mix them
        check_fingerprint(cfg.search.study_name, stored_fingerprint(storage, cfg.search.study_name),
                          fingerprint, force=cfg.search.resume == "force")
    return _Records(storage, Tracker(cfg.tracking.uri, cfg.tracking.experiment))


class Search:
    """One invocation of a search. Construct (validates config, loads/trains the baseline), then run():
    the baseline is measured, then a SearchLoop runs the trials with observers for MLflow, the progress
    line, heartbeats and the report."""

    def __init__(self, cfg: AppConfig, output_dir: Path):
        self.cfg = cfg = AppConfig.of(cfg)   # a composed DictConfig (Python API, tests) is checked here
        self.output_dir = Path(output_dir)
        check_search(cfg)  # warm start, NNI, measurement runtime: before anything is built or recorded
        self.objectives = Objectives.from_config(cfg.search.objectives, cfg.search.constraints)
        sampler = make_sampler(cfg.search.sampler, cfg.seed, cfg.search.population_size)
        self.searcher_class = searcher_class(cfg.search.backend, cfg.search.sampler)
        self.stale = StaleTrialHandler(cfg.search.max_retry)
        self.fingerprint = study_fingerprint(cfg, load_profile(cfg.hw).digest())
        inputs = check_inputs(cfg)
        records = _open_records(cfg, self.fingerprint, self.stale)
        self.storage, self.tracker = records.storage, records.tracker
        self.ctx: SearchContext = finish_context(inputs)  # trains the baseline if not cached
        self.study_name = self.ctx.study_name
        self.study = open_study(self.storage, self.study_name, sampler, self.objectives.directions)
        self.study.set_metric_names(list(self.objectives.names))   # the report, optuna-dashboard: named axes
        if ATTR not in self.study.user_attrs or cfg.search.resume == "force":
            self.study.set_user_attr(ATTR, self.fingerprint)
        self.budget = Budget(cfg.search.n_trials, cfg.search.storage, cfg.search.run_name or None)
        self.max_drop = cfg.search.hv_max_drop
        self.baseline_onnx: Path | None = None   # the deployed baseline, kept once measured
        self.mlflow = MlflowObserver(self.tracker, self.study_name, self.ctx.groups, self.output_dir,
                                     multi_fidelity=cfg.search.fidelity.multi)

    # ------------------------------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        cfg, ctx = self.cfg, self.ctx
        # One starting worker at a time: a dead process's trials are retried once, the warm start enqueued once.
        with shared_lock(cfg.search.storage, self.study_name, cfg.search.run_name):
            self._close_orphans()
            if not self.study.trials:
                warm = ctx.space.warm_start(cfg.search.warm_start)
                allocate = cfg.search.allocate
                warm += warm_start_plans(ctx.space, ctx.evaluator.start_model(), ctx.evaluator.pruner, ctx.profile,
                                         list(allocate.budgets), allocate.table)
                for plan in warm:
                    self.study.enqueue_trial(ctx.space.encode(plan))
        # The resolved config travels with the study: report / pick / reproduce rebuild from it.
        self.study.set_user_attr("config", cfg.to_dict())
        split_sizes = SplitSizes.of(ctx.task.data)   # the report's accuracy intervals, recorded as data
        self.study.set_user_attr(SPLIT_SIZES, {"val": split_sizes.val, "test": split_sizes.test})
        params = {"task": cfg.task.name, "hw": ctx.profile.name, "hw_digest": ctx.profile.digest(),
                  "n_trials": cfg.search.n_trials, "backend": cfg.search.backend, "sampler": cfg.search.sampler,
                  "objectives": ",".join(self.objectives.names), "storage": cfg.search.storage,
                  "groups": len(ctx.groups), "importance": ",".join(ctx.space.importances),
                  "output_dir": str(self.output_dir), "hw_precision": ctx.profile.precision,
                  "hw_batch_size": ctx.profile.batch_size,
                  "also_measure": ",".join(t.profile.name for t in ctx.evaluator.also) or "-"}
        group = self.budget.group
        parent = guarded("start of the search run", lambda: self.tracker.start_search(
            f"search-{group or self.study_name}", self.study_name, params, group=group))
        if parent:
            guarded("target tag", lambda: self.tracker.log(parent, tags={TARGET_TAG: self._target()}))
        self.mlflow.reconcile(self.study, "start")
        log.info("study %s (%d of %d trials done%s) | %d prunable groups | hw %s | MLflow run %s",
                 self.study_name, min(self.budget.used(self.study), self.budget.n_trials), cfg.search.n_trials,
                 f" in run group {group}" if group else "", len(ctx.groups), ctx.profile.name, parent)
        status = "FAILED"
        try:
            baseline = self._measure_baseline()
            report = ReportObserver(self.mlflow, ctx.evaluator, ctx.task.data, self.output_dir, split_sizes,
                                    self.max_drop)
            # search.screen: before the MlflowObserver, which closes the trial runs it tags
            screen = build_screen(cfg.search.screen, ctx, self.objectives, baseline, self.tracker)
            retime = RetimeObserver(cfg.search.retime, self.objectives, ctx.profile, ctx.backend, self.tracker,
                                    self.output_dir, self._deployed_baseline(), baseline["latency_ms"], cfg.seed,
                                    lambda trial, weights: ctx.evaluator.rebuild(
                                        PrunePlan.from_dict(trial.user_attrs["plan"]), weights))
            self._loop(baseline, [HeartbeatObserver(Heartbeat(self.storage, cfg.search.heartbeat_s or 0)),
                                  *([screen] if screen else []),
                                  self.mlflow,
                                  MlflowProgressObserver(self.tracker),
                                  ProgressObserver(baseline, self.budget),
                                  retime,   # before the report: the front it draws follows the re-timing
                                  report], screen).run()
            assert report.report is not None
            outcome = SearchOutcome(self.tracker.parent_id, report.report, report.files)
            status = "FINISHED"
            return outcome
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if parent:
                guarded("end of the search run", lambda: self.tracker.end(parent, status))

    def _loop(self, baseline: dict, observers: list[Observer], screen: LatencyScreen | None = None) -> SearchLoop:
        search = self.cfg.search
        stop = search.early_stop
        stopper = ParetoStopper(self.study, stop.margin, stop.min_epoch) if stop.enabled else None
        allocation = None
        if search.sampler == "allocate":   # the HALP searcher: importance and a latency model of the start model
            allocation = allocation_inputs(self.ctx.space, self.ctx.evaluator.start_model(), self.ctx.evaluator.pruner,
                                           self.ctx.profile, search.allocate.table)
        searcher = self.searcher_class.build(
            self.study, self.ctx.space, SearcherSettings.of(self.cfg, baseline["latency_ms"], allocation))
        evaluator = ScreenedEvaluator(self.ctx.evaluator, screen) if screen else self.ctx.evaluator
        return SearchLoop(self.study, searcher, self.ctx.space, evaluator, self.objectives, baseline,
                          self.budget, self.output_dir, observers, stale=self.stale, stopper=stopper,
                          trial_timeout_s=search.trial_timeout_s, check_stale=bool(search.heartbeat_s),
                          rung0=self._rung0(), max_drop=self.max_drop, timeout_s=search.timeout_s)

    def _rung0(self) -> Rung0Step | None:
        """Rung 0 of a multi-fidelity search (search.fidelity), None for a single-fidelity one."""
        fidelity = self.cfg.search.fidelity
        if not fidelity.multi:
            return None
        needs_latency = "latency_ms" in self.objectives.names or "max_latency_ms" in dict(self.objectives.bounds)
        table = LatencyTable.load(Path(fidelity.table), self.ctx.profile) if fidelity.table else None
        scorer = Rung0Scorer(self.ctx.evaluator, Rung0Config(fidelity.bn_batches, fidelity.steps, needs_latency), table)
        return Rung0Step(scorer, PromotionRule(self.objectives, fidelity.margin, fidelity.warmup, fidelity.promote))

    def _target(self) -> str:
        """The target(s) of this search's front(s): `cpu-ort-int8-1t (int8, batch 1)`, then also_measure's."""
        profiles = [self.ctx.profile, *(t.profile for t in self.ctx.evaluator.also)]
        return "; ".join(f"{p.name} ({p.precision}, batch {p.batch_size})" for p in profiles)

    def _measure_baseline(self) -> dict:
        """Score and time the unpruned model in this run, so speedups are ratios taken side by side."""
        ctx = self.ctx
        run_id = guarded("start of the baseline run", lambda: self.tracker.start_child(
            "baseline", "baseline", {STUDY: self.study_name}))
        try:
            metrics, latency, n_params = self._score_baseline(run_id)
        except BaseException:   # not left RUNNING: the search's failure is the baseline run's too
            self.mlflow.close_run(run_id, "FAILED", {})
            raise
        log.info("baseline (%s): val %.2f%% test %.2f%% | %.3f ms median (cv %.2f%%, n=%d) | %s params",
                 ctx.baseline_origin, 100 * metrics["val_accuracy"], 100 * metrics["test_accuracy"],
                 latency.median_ms, 100 * latency.cv, latency.n, f"{int(n_params):,}")
        warning = near_chance(metrics["val_accuracy"], ctx.task.data.val, ctx.baseline_origin)
        if warning:
            log.warning("%s", warning)
        return metrics

    def _score_baseline(self, run_id: str | None) -> tuple[dict, LatencyStats, int]:
        ctx = self.ctx
        model, data, example = ctx.baseline, ctx.task.data, ctx.evaluator.example_input
        with tempfile.TemporaryDirectory() as tmp:
            exported = ctx.evaluator.deployed(export_model(model, example, Path(tmp)))   # int8: the int8 model
            latency = ctx.backend.measure(exported, ctx.profile, fresh=True)  # never cached: side by side
            macs, n_params = tp.utils.count_ops_and_params(model, example)
            val, test = evaluate(model, data.val), evaluate(model, data.test)
            metrics = {**ctx.evaluator.artifact_scores(exported, "val", val),   # the artifact's, and torch's
                       **ctx.evaluator.artifact_scores(exported, "test", test),
                       "latency_ms": latency.median_ms, "latency_p90_ms": latency.p90_ms, "latency_cv": latency.cv,
                       "latency_per_sample_ms": latency.median_ms / ctx.profile.batch_size,
                       "macs": macs, "params": n_params, "onnx_bytes": exported.onnx_path.stat().st_size}
            metrics |= measure_targets(ctx.evaluator.also, fp32_source(exported), ctx.evaluator.calibration,
                                       data.val, val, fresh=True)
            (Path(tmp) / "latency.json").write_text(json.dumps(latency.to_dict(), indent=2))
            self.baseline_onnx = self.output_dir / "baseline" / "model.onnx"   # re-timed at the end (search.retime)
            self.baseline_onnx.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(exported.onnx_path, self.baseline_onnx)

            def log_results(run_id: str) -> bool:
                self.tracker.log(run_id, metrics=metrics, tags={"autoprune.source": ctx.baseline_origin},
                                 params={f"hw.{k}": v for k, v in latency.fingerprint.items()})
                self.tracker.log_artifacts(run_id, [exported.onnx_path, Path(tmp) / "latency.json"])
                return True

            logged = run_id and guarded("baseline results", lambda: log_results(run_id))
        self.mlflow.close_run(run_id, "FINISHED" if logged else "FAILED",
                              {} if logged else {"autoprune.logging_error": "baseline results incomplete"})
        return metrics, latency, n_params

    def _deployed_baseline(self) -> ExportedModel | None:
        """The baseline as measured (its deployed ONNX file kept by _score_baseline, and the module for runtime
        torch), for the end-of-search re-timing."""
        if self.baseline_onnx is None:
            return None
        return ExportedModel(self.baseline_onnx, module=self.ctx.baseline)

    def _close_orphans(self) -> None:
        """What a killed process of this host left RUNNING: its trials are failed and retried
        (search.max_retry), its MLflow runs ended KILLED."""
        def orphaned(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self.mlflow.on_trial_end(study, trial, TrialOutcome.lost("worker process gone (killed or crashed)"))
            self.stale.retry(study, trial)

        failed = fail_orphaned_trials(self.study, orphaned)
        closed = self.mlflow.close_orphaned_runs()
        if failed or closed:
            log.warning("a killed search left trial(s) %s and %d MLflow run(s) running: failed%s and closed",
                        failed, len(closed or []), " (retried)" if failed and self.stale.max_retry else "")


def print_summary(report: ReportData, tracker_ui: str, report_dir: Path) -> None:
    print()
    screened = f", {report.n_candidates} more candidates scored at rung 0 only" if report.n_candidates else ""
    print(f"Pareto models of study {report.study_name} on {report.target or 'its profile'} ({len(report.trials)} "
          f"completed trials{screened}; speedup = baseline median latency / model median latency, measured on that profile):")
    print(format_table(report))
    if report.predictor:   # search.screen
        print(f"latency predictor: {predictor_summary(report.predictor)}")
    if report.retime:   # search.retime
        print(f"re-timed: {retime_summary(report.retime)}")
    print()
    print(f"report:    {report_dir / 'report.html'}")
    print(f"MLflow UI: {tracker_ui}   (then open http://127.0.0.1:5000)")
