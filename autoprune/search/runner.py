"""`python -m autoprune` (mode=search): build everything once, run N trials, report the Pareto front.

Data flows one way: config → SearchContext (task, baseline, profile, pruner) → trials (Optuna ask →
candidate → Optuna tell → MLflow) → Pareto set → test-split evaluation → report.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch_pruning as tp
from omegaconf import DictConfig, OmegaConf

from autoprune import interrupts
from autoprune.baseline import near_chance
from autoprune.candidate import TrialResult
from autoprune.context import SearchContext, build_context
from autoprune.deploy import write_bundle
from autoprune.errors import ConfigError
from autoprune.hw import LatencyStats, export_model, load_profile
from autoprune.hw.artifact import FP32_NAME, artifact_accuracy, artifact_differs, fp32_source
from autoprune.owner import process_owner
from autoprune.plan import PrunePlan
from autoprune.recover import evaluate
from autoprune.report import ReportData, collect, format_table, write_report
from autoprune.report.recommend import SPLIT_SIZES, SplitSizes
from autoprune.search.pareto import normalized_hypervolume
from autoprune.search.deadline import deadline
from autoprune.search.checks import check_search
from autoprune.search.early_stop import ParetoStopper
from autoprune.search.fingerprint import ATTR, check_fingerprint, stored_fingerprint, study_fingerprint
from autoprune.search.objectives import Objectives
from autoprune.search.searchers import NniSearcher, OptunaSearcher, Searcher, UniformGridSearcher, make_sampler
from autoprune.search.study import open_storage, open_study
from autoprune.targets import load_targets, measure_targets
from autoprune.search.workers import (INTERRUPTED_ATTR, OWNER_ATTR, Heartbeat, StaleTrialHandler, budget_used, claim,
                                      fail_orphaned_trials, shared_lock)
from autoprune.track import Tracker
from autoprune.track.mlflow_tracker import (FAIL_REASON, ONNX_MODEL_ID, PARETO, STATE, STUDY, TRIAL_NUMBER,
                                            TrackingError, TrialRecord)

log = logging.getLogger("autoprune")
TRIAL_ARTIFACTS = ("plan.json", "latency.json", "model.onnx", FP32_NAME, "model.pt")  # what a trial run holds
TARGET_TAG = "autoprune.target"   # on the parent run: the profile its front belongs to (and search.also_measure)


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str
    report: ReportData
    report_files: list[Path]

    @property
    def study_name(self) -> str:
        return self.report.study_name


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]


class Search:
    """One invocation of a search. Construct (validates config, loads/trains the baseline), then run()."""

    def __init__(self, cfg: DictConfig, output_dir: Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        if int(cfg.search.n_trials) < 0:
            raise ConfigError(f"search.n_trials must be >= 0, got {cfg.search.n_trials}")
        if cfg.search.backend not in ("optuna", "nni"):
            raise ConfigError(f"unknown search.backend '{cfg.search.backend}': choose optuna or nni")
        check_search(cfg)  # warm start, NNI, measurement runtime: before anything is built or recorded
        self.objectives = Objectives.from_config(cfg.search.objectives, cfg.search.constraints)
        sampler = make_sampler(cfg.search.sampler, int(cfg.seed), int(cfg.search.population_size))
        self.stale = StaleTrialHandler(int(cfg.search.max_retry))

        self.fingerprint = study_fingerprint(cfg, load_profile(cfg.hw).digest())

        def open_records() -> None:  # after the cheap checks, before the baseline trains: a bad URL fails fast
            self.storage = open_storage(cfg.search.storage, cfg.search.heartbeat_s, self.stale)
            if cfg.search.study_name:  # a named study may hold another search's trials: refuse to mix them
                check_fingerprint(str(cfg.search.study_name), stored_fingerprint(self.storage, cfg.search.study_name),
                                  self.fingerprint, force=cfg.search.resume == "force")
            self.tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)

        self.ctx: SearchContext = build_context(cfg, before_baseline=open_records)  # trains the baseline if not cached
        self.stale.on_stale = self._close_stale_run
        self.study_name = self.ctx.study_name
        self.ctx.evaluator.also = load_targets(cfg.search.get("also_measure"), self.ctx.profile,
                                               Path(cfg.cache_dir), check=False)   # checked by check_search
        self.study = open_study(self.storage, self.study_name, sampler, self.objectives.directions)
        self.study.set_metric_names(list(self.objectives.names))   # the report, optuna-dashboard: named axes
        if ATTR not in self.study.user_attrs or cfg.search.resume == "force":
            self.study.set_user_attr(ATTR, self.fingerprint)
        self.heartbeat = Heartbeat(self.storage, float(cfg.search.heartbeat_s or 0))
        stop = cfg.search.early_stop
        self.stopper = ParetoStopper(self.study, float(stop.margin), int(stop.min_epoch)) if stop.enabled else None

    # ------------------------------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        cfg, ctx = self.cfg, self.ctx
        # One starting worker at a time: a dead process's trials are retried once, the warm start enqueued once.
        with shared_lock(cfg.search.storage, self.study_name, cfg.search.run_name):
            self._close_orphans()
            if not self.study.trials:
                warm = [ctx.space.uniform(float(ratio)) for ratio in cfg.search.warm_start]
                if ctx.space.has_group_ranges:  # a sensitivity prior: each group at its own limit
                    warm.append(ctx.space.upper())
                for plan in warm:
                    self.study.enqueue_trial(ctx.space.encode(plan))
        # The resolved config travels with the study: report / pick / reproduce rebuild from it.
        self.study.set_user_attr("config", OmegaConf.to_container(cfg, resolve=True))
        self.split_sizes = SplitSizes.of(ctx.task.data)   # the report's accuracy intervals, recorded as data
        self.study.set_user_attr(SPLIT_SIZES, {"val": self.split_sizes.val, "test": self.split_sizes.test})
        params = {"task": cfg.task.name, "hw": ctx.profile.name, "hw_digest": ctx.profile.digest(),
                  "n_trials": cfg.search.n_trials, "backend": cfg.search.backend, "sampler": cfg.search.sampler,
                  "objectives": ",".join(self.objectives.names), "storage": cfg.search.storage,
                  "groups": len(ctx.groups), "importance": ",".join(ctx.space.importances),
                  "output_dir": str(self.output_dir), "hw_precision": ctx.profile.precision,
                  "hw_batch_size": ctx.profile.batch_size,
                  "also_measure": ",".join(t.profile.name for t in ctx.evaluator.also) or "-"}
        group = cfg.search.run_name
        parent = self._mlflow("start of the search run", lambda: self.tracker.start_search(
            f"search-{group or self.study_name}", self.study_name, params, group=group))
        if parent:
            self._mlflow("target tag", lambda: self.tracker.log(parent, tags={TARGET_TAG: self._target()}))
        self._reconcile("start")
        used = budget_used(self.study, group)
        log.info("study %s (%d of %d trials done%s) | %d prunable groups | hw %s | MLflow run %s",
                 self.study_name, min(used, int(cfg.search.n_trials)), cfg.search.n_trials,
                 f" in run group {group}" if group else "", len(ctx.groups), ctx.profile.name, parent)
        status = "FAILED"
        try:
            baseline = self._measure_baseline()
            # Ctrl-C / SIGTERM land between two trials or in a trial's evaluation (which they fail and retry):
            # never between ask and tell, nor while a trial's MLflow run is opened or closed.
            with interrupts.held():
                self._trials(baseline, self._searcher(baseline))
            outcome = self._finish()
            status = "FINISHED"
            return outcome
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if parent:
                self._mlflow("end of the search run", lambda: self.tracker.end(parent, status))

    def _target(self) -> str:
        """The target(s) of this search's front(s): `cpu-ort-int8-1t (int8, batch 1)`, then also_measure's."""
        profiles = [self.ctx.profile, *(t.profile for t in self.ctx.evaluator.also)]
        return "; ".join(f"{p.name} ({p.precision}, batch {p.batch_size})" for p in profiles)

    def _measure_baseline(self) -> dict:
        """Score and time the unpruned model in this run, so speedups are ratios taken side by side."""
        ctx = self.ctx
        run_id = self._mlflow("start of the baseline run", lambda: self.tracker.start_child(
            "baseline", "baseline", {STUDY: self.study_name}))
        try:
            metrics, latency, n_params = self._score_baseline(run_id)
        except BaseException:   # not left RUNNING: the search's failure is the baseline run's too
            self._close_run(run_id, "FAILED", {})
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
            logged = run_id and self._mlflow("baseline results", lambda: (
                self.tracker.log(run_id, metrics=metrics, tags={"autoprune.source": ctx.baseline_origin},
                                 params={f"hw.{k}": v for k, v in latency.fingerprint.items()}),
                self.tracker.log_artifacts(run_id, [exported.onnx_path, Path(tmp) / "latency.json"])))
        self._close_run(run_id, "FINISHED" if logged else "FAILED",
                        {} if logged else {"autoprune.logging_error": "baseline results incomplete"})
        return metrics, latency, n_params

    def _searcher(self, baseline: dict) -> Searcher:
        search = self.cfg.search
        if search.backend == "nni":
            return NniSearcher(self.study, self.ctx.space, search.nni.tuner, int(self.cfg.seed),
                               float(search.nni.speedup_weight), baseline["latency_ms"])
        if search.sampler == "uniform":
            return UniformGridSearcher(self.study, self.ctx.space)
        return OptunaSearcher(self.study)

    def _close_stale_run(self, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose worker died: its MLflow run must not stay RUNNING forever."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            self._close_run(run_id, "KILLED", {STATE: "failed", FAIL_REASON: "worker lost (no heartbeat)"})

    def _orphaned(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            self._close_run(run_id, "KILLED", {STATE: "failed", FAIL_REASON: "worker process gone (killed or crashed)"})
        self.stale.retry(study, trial)

    def _close_orphans(self) -> None:
        """What a killed process of this host left RUNNING: its trials are failed and retried
        (search.max_retry), its MLflow runs ended KILLED."""
        failed = fail_orphaned_trials(self.study, self._orphaned)
        closed = self._mlflow("closing orphaned runs", lambda: self.tracker.close_orphaned_runs(self.study_name))
        if failed or closed:
            log.warning("a killed search left trial(s) %s and %d MLflow run(s) running: failed%s and closed",
                        failed, len(closed or []), " (retried)" if failed and self.stale.max_retry else "")

    def _next_trial(self, searcher: Searcher) -> optuna.Trial | None:
        """The next trial within the budget: search.n_trials for the study, or for the run group
        shared by all its workers."""
        interrupts.check()  # a signal held during the last trial's bookkeeping ends the search here
        if self.cfg.search.heartbeat_s:
            optuna.storages.fail_stale_trials(self.study)
        group = self.cfg.search.run_name
        return claim(self.study, self.cfg.search.storage, str(group) if group else None,
                     int(self.cfg.search.n_trials), searcher.ask)

    def _trials(self, baseline: dict, searcher: Searcher) -> None:
        n_trials, started = int(self.cfg.search.n_trials), time.perf_counter()
        group = self.cfg.search.run_name
        max_drop = float(self.cfg.search.hv_max_drop)
        for i in itertools.count():
            trial = self._next_trial(searcher)
            if trial is None:
                if i == 0:
                    log.info("the budget of %d trials is spent: nothing to run (raise search.n_trials to run more)",
                             n_trials)
                break
            position = budget_used(self.study, group)
            plan = self.ctx.space.suggest(trial)
            t0 = time.perf_counter()
            with self.heartbeat.beating(trial):
                result = self._one_trial(trial, plan, searcher, baseline)
            complete = self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
            feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
            hv = normalized_hypervolume([t.user_attrs for t in feasible], self.objectives.names, baseline, max_drop)
            self._mlflow("search progress", lambda: self.tracker.log(
                self.tracker.parent_id, metrics={"hypervolume": hv, "completed_trials": len(complete)},
                step=trial.number))
            elapsed = time.perf_counter() - started
            progress = (f"front {len(self.study.best_trials)} | hv {hv:.3f} | {_fmt_time(elapsed)} elapsed, "
                        f"ETA {_fmt_time(elapsed / (i + 1) * max(0, n_trials - position))}")
            if result is None:
                attrs = self.study.trials[trial.number].user_attrs
                outcome = f"stopped early: {attrs['stop_reason']}" if "stop_reason" in attrs else \
                    f"FAILED: {attrs.get('fail_reason')}"
                log.info("trial %d/%d (#%d) %s | %s", position, n_trials, trial.number, outcome, progress)
                continue
            log.info("trial %d/%d (#%d) %.1fs | val %.2f%% | %.3f ms (%.2fx) | %s params | %s", position, n_trials,
                     trial.number, time.perf_counter() - t0, 100 * result.val_accuracy, result.latency.median_ms,
                     baseline["latency_ms"] / result.latency.median_ms, f"{result.params:,}", progress)

    def _mlflow(self, what: str, call: Callable[[], Any]) -> Any:
        """MLflow trouble (after the tracker's retries) never stops a search: Optuna is the record, and
        `_reconcile` brings MLflow back in agreement with it."""
        try:
            return call()
        except TrackingError as exc:
            log.warning("MLflow: %s failed (%s); the search goes on, Optuna keeps the result", what, exc)
            return None

    def _trial_params(self, plan: PrunePlan) -> dict:
        return {f"ratio.{g.name}": plan.ratio(g.name) for g in self.ctx.groups} | {"importance": plan.importance}

    def _records(self) -> list[TrialRecord]:
        """Every COMPLETE trial of the study as Optuna has it; the files of this process's own trials."""
        records = []
        for t in self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
            attrs, workdir = t.user_attrs, self.output_dir / "trials" / f"{t.number:04d}"
            metrics = {k: v for k, v in attrs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            metrics |= {f"seconds_{k}": v for k, v in attrs.get("seconds", {}).items()}
            own = attrs.get(OWNER_ATTR) == process_owner()
            records.append(TrialRecord(t.number, attrs.get("mlflow_run_id"),
                                       self._trial_params(PrunePlan.from_dict(attrs["plan"])), metrics,
                                       [workdir / n for n in TRIAL_ARTIFACTS if own and (workdir / n).is_file()]))
        return records

    def _reconcile(self, when: str) -> None:
        """At the start and at the end: MLflow is made to agree with Optuna (see Tracker.reconcile)."""
        done = self._mlflow(f"reconciling with Optuna at the {when}",
                            lambda: self.tracker.reconcile(self.study_name, self._records()))
        if done:
            log.warning("MLflow reconciled with Optuna at the %s: trial run(s) %s repaired, %s created, %s flagged "
                        "autoprune.logging_error", when, done.repaired, done.created, done.flagged)

    def _one_trial(self, trial: optuna.Trial, plan: PrunePlan, searcher: Searcher,
                   baseline: dict) -> TrialResult | None:
        """Evaluate one plan. A trial that raises or runs past search.trial_timeout_s is told failed
        with its reason (a stopped one: pruned) and the search goes on."""
        trial.set_user_attr("plan", plan.to_dict())
        run_id = self._mlflow("start of a trial run", lambda: self.tracker.start_child(
            f"trial-{trial.number}", "trial", {STUDY: self.study_name, TRIAL_NUMBER: trial.number, STATE: "running"}))
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
            self._mlflow("trial params", lambda: self.tracker.log(run_id, params=self._trial_params(plan)))
        workdir = self.output_dir / "trials" / f"{trial.number:04d}"
        monitor = self.stopper.monitor(trial) if self.stopper else None
        try:
            with interrupts.allowed(), deadline(self.cfg.search.trial_timeout_s):
                result = self.ctx.evaluator.evaluate(plan, workdir, monitor)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("stop_reason", str(exc))
            searcher.tell(trial, None, None, optuna.trial.TrialState.PRUNED)
            self._close_run(run_id, "FINISHED", {STATE: "pruned", "autoprune.stop_reason": str(exc)})
            return None
        except (Exception, KeyboardInterrupt) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)  # Ctrl-C or SIGTERM: retried like a killed trial
            # (a second signal waits until this is done: autoprune.interrupts)
            reason = "interrupted" if interrupted else _one_line(exc)
            trial.set_user_attr("fail_reason", reason)
            if interrupted:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
            searcher.tell(trial, None, None)
            self._close_run(run_id, "KILLED" if interrupted else "FAILED", {STATE: "failed", FAIL_REASON: reason})
            if interrupted:
                self.stale.retry(self.study, self.study.trials[trial.number])
                raise
            return None
        metrics = result.metrics()
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", result.seconds)
        if result.repaired:  # the plan asked more of a group than it can give: what was built instead
            trial.set_user_attr("repaired", result.repaired)
        for name, value in self.objectives.violations(metrics, baseline).items():
            trial.set_constraint(name, value)
        searcher.tell(trial, self.objectives.values(metrics), metrics)
        (workdir / "plan.json").write_text(plan.to_json())
        (workdir / "latency.json").write_text(json.dumps(result.latency.to_dict(), indent=2))
        if run_id and not self._mlflow("trial results", lambda: self._log_trial(run_id, result, metrics, workdir)):
            self._close_run(run_id, "FINISHED", {"autoprune.logging_error": "results or artifacts incomplete"})
        return result

    def _log_trial(self, run_id: str, result: TrialResult, metrics: dict, workdir: Path) -> bool:
        started = time.perf_counter()
        repaired = {"autoprune.repaired": json.dumps(result.repaired)} if result.repaired else {}
        self.tracker.log(run_id, metrics=metrics | {f"seconds_{k}": v for k, v in result.seconds.items()},
                         tags={STATE: "complete", **repaired})
        fp32 = [workdir / FP32_NAME] if (workdir / FP32_NAME).is_file() else []   # int8: model.onnx is the int8 one
        self.tracker.log_artifacts(run_id, [workdir / "plan.json", workdir / "latency.json",
                                            result.onnx_path, *fp32, result.model_path])
        self.tracker.log(run_id, metrics={"seconds_log": time.perf_counter() - started})
        self.tracker.end(run_id)
        return True

    def _close_run(self, run_id: str | None, status: str, tags: dict) -> None:
        if run_id:
            self._mlflow("closing a run", lambda: (tags and self.tracker.log(run_id, tags=tags),
                                                   self.tracker.end(run_id, status)))

    def _finish_pareto_model(self, run, plan: PrunePlan) -> None:
        """Test accuracy (evaluated once) and MLflow models (logged once) of a Pareto trial's run. The
        model is rebuilt from the baseline and the trial's plan (from Optuna) with the logged weights
        loaded weights-only: nothing read back from the artifact store is executed."""
        run_id = run.info.run_id
        if "test_accuracy" in run.data.metrics and ONNX_MODEL_ID in run.data.tags:
            return
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = self.tracker.download(run_id, "model.onnx", Path(tmp))
            model = self.ctx.evaluator.rebuild(plan, self.tracker.download(run_id, "model.pt", Path(tmp)))
            if "test_accuracy" not in run.data.metrics:   # the deployed artifact's (model.onnx), and torch's
                test = evaluate(model, self.ctx.task.data.test)
                self.tracker.log(run_id, metrics={"test_accuracy": test} if not artifact_differs(self.ctx.profile) else
                                 {"test_accuracy": artifact_accuracy(onnx_file, self.ctx.profile, self.ctx.task.data.test),
                                  "test_accuracy_torch": test})
            if ONNX_MODEL_ID not in run.data.tags:
                self.tracker.log_models(run_id, onnx_file, model)

    def _finish(self) -> SearchOutcome:
        """Pareto models: test accuracy (once), MLflow models, pareto tags; then the report."""
        self._reconcile("end")
        front = {t.number: t for t in self.study.best_trials}
        for run in self._mlflow("listing trial runs", lambda: self.tracker.trial_runs(self.study_name)) or []:
            number, run_id = int(run.data.tags[TRIAL_NUMBER]), run.info.run_id
            on_front = number in front
            self._mlflow("pareto tag", lambda: self.tracker.log(run_id, tags={PARETO: str(on_front).lower()}))
            if not on_front or run.info.status != "FINISHED" or "autoprune.logging_error" in run.data.tags:
                continue
            try:
                self._finish_pareto_model(run, PrunePlan.from_dict(front[number].user_attrs["plan"]))
            except Exception as exc:  # MLflow trouble: the model keeps its Optuna record and report row
                log.warning("Pareto model #%d: test accuracy / MLflow models skipped (%s)", number, _one_line(exc))
        data = collect(self.study, self.tracker, float(self.cfg.search.hv_max_drop))
        files = write_report(data, self.output_dir / "report", self.split_sizes)
        if self.tracker.parent_id:
            self._mlflow("report artifacts", lambda: self.tracker.log_artifacts(self.tracker.parent_id, files, "report"))
        write_bundle(data, self.tracker, self.output_dir / "report")
        if self.tracker.parent_id:
            self._mlflow("pareto size", lambda: self.tracker.log(self.tracker.parent_id,
                                                                 metrics={"pareto_size": len(data.front)}))
        return SearchOutcome(self.tracker.parent_id, data, files)


def print_summary(report: ReportData, tracker_ui: str, report_dir: Path) -> None:
    print()
    print(f"Pareto models of study {report.study_name} on {report.target or 'its profile'} ({len(report.trials)} "
          f"completed trials; speedup = baseline median latency / model median latency, measured on that profile):")
    print(format_table(report))
    print()
    print(f"report:    {report_dir / 'report.html'}")
    print(f"MLflow UI: {tracker_ui}   (then open http://127.0.0.1:5000)")
