"""`python -m autoprune` (mode=search): build everything once, run N trials, report the Pareto front.

Data flows one way: config → task/baseline/profile → trials (Optuna ask → candidate → Optuna tell →
MLflow) → Pareto set → test-split evaluation → report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
import torch_pruning as tp
from omegaconf import DictConfig, OmegaConf

from autoprune.baseline import load_baseline
from autoprune.candidate import CandidateEvaluator, TrialResult
from autoprune.errors import ConfigError
from autoprune.hw import export_onnx, get_backend, load_profile
from autoprune.plan import PrunePlan
from autoprune.prune import ChannelPruner, output_layers
from autoprune.recover import TrainConfig, evaluate
from autoprune.report import Candidate, format_table, write_report
from autoprune.search.space import SearchSpace, load_space, plan_from_params
from autoprune.search.study import make_sampler, open_storage, open_study
from autoprune.tasks import build_task
from autoprune.track import Tracker
from autoprune.track.mlflow_tracker import PARETO, STATE, STUDY, TRIAL_NUMBER

log = logging.getLogger("autoprune")


@dataclass(frozen=True)
class SearchOutcome:
    study_name: str
    parent_run_id: str
    baseline: Candidate
    front: list[Candidate]
    report_files: list[Path]
    n_complete: int


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


def _study_name(cfg: DictConfig, task_key: str, profile_digest: str, space: SearchSpace) -> str:
    if cfg.search.study_name:
        return str(cfg.search.study_name)
    spec = json.dumps([task_key, profile_digest, space.describe(), OmegaConf.to_container(cfg.recover)],
                      sort_keys=True)
    return f"{cfg.task.name}-{cfg.hw if '/' not in str(cfg.hw) else Path(str(cfg.hw)).stem}-" \
           f"{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def _candidate_from_trial(trial: optuna.trial.FrozenTrial, baseline_ms: float) -> Candidate:
    a = trial.user_attrs
    return Candidate(
        trial=trial.number, val_accuracy=trial.values[0], latency_ms=trial.values[1],
        latency_p90_ms=a["latency_p90_ms"], params=int(a["params"]), macs=int(a["macs"]),
        onnx_bytes=int(a["onnx_bytes"]),
        speedup=baseline_ms / trial.values[1], ratios=dict(plan_from_params(trial.params).to_dict()["groups"]),
    )


class Search:
    """One invocation of a search. Construct (validates config, loads/trains the baseline), then run()."""

    def __init__(self, cfg: DictConfig, output_dir: Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        # Validate every cheap input before the expensive ones (baseline training).
        self.profile = load_profile(cfg.hw)
        self.backend = get_backend(self.profile)
        self.sampler = make_sampler(cfg.search.sampler, int(cfg.seed))
        if int(cfg.search.n_trials) < 0:
            raise ConfigError(f"search.n_trials must be >= 0, got {cfg.search.n_trials}")
        self.storage = open_storage(cfg.search.storage)
        self.task = build_task(cfg.task)
        self.tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
        self.baseline, self.baseline_origin = load_baseline(self.task, Path(cfg.cache_dir))
        example = torch.randn(self.profile.batch_size, *self.task.data.sample_shape())
        try:
            self.baseline(example)
        except Exception as exc:
            raise ConfigError(f"the model rejects inputs of shape {tuple(example.shape)} from the data "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]}): make task.data and task.model agree") from None
        ignore = list(dict.fromkeys([*cfg.prune.ignore, *output_layers(self.baseline, example)]))
        pruner = ChannelPruner(example, ignore, self.profile.round_to)
        self.groups = pruner.groups(self.baseline)
        self.space = load_space(cfg.search_space, [g.name for g in self.groups], cfg.prune.importance)
        self.evaluator = CandidateEvaluator(self.baseline, self.task.data, pruner,
                                            TrainConfig(**OmegaConf.to_container(cfg.recover, resolve=True)),
                                            self.profile, self.backend)
        self.study_name = _study_name(cfg, self.task.key, self.profile.digest(), self.space)
        self.study = open_study(self.storage, self.study_name, self.sampler)

    # ------------------------------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        cfg = self.cfg
        if not self.study.trials:
            for ratio in cfg.search.warm_start:
                self.study.enqueue_trial(self.space.params(self.space.uniform(float(ratio))))
        params = {"task": cfg.task.name, "hw": self.profile.name, "hw_digest": self.profile.digest(),
                  "n_trials": cfg.search.n_trials, "sampler": cfg.search.sampler, "storage": cfg.search.storage,
                  "groups": len(self.groups), "importance": self.space.importance,
                  "output_dir": str(self.output_dir)}
        parent = self.tracker.start_search(f"search-{self.study_name}", self.study_name, params)
        earlier = sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))
        log.info("study %s (%d earlier trials) | %d prunable groups | hw %s | MLflow run %s",
                 self.study_name, earlier, len(self.groups), self.profile.name, parent)
        status = "FAILED"
        try:
            baseline = self._measure_baseline()
            self._trials(baseline)
            outcome = self._finish(baseline)
            status = "FINISHED"
            return outcome
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.tracker.end(parent, status)

    def _measure_baseline(self) -> Candidate:
        """Score and time the unpruned model in this run, so speedups are ratios taken side by side."""
        model, data, example = self.baseline, self.task.data, self.evaluator.example_input
        run_id = self.tracker.start_child("baseline", "baseline", {STUDY: self.study_name})
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, example, Path(tmp) / "model.onnx")
            latency = self.backend.measure(onnx_path, self.profile)
            macs, n_params = tp.utils.count_ops_and_params(model, example)
            cand = Candidate(-1, evaluate(model, data.val), latency.median_ms, latency.p90_ms, int(n_params),
                             int(macs), onnx_path.stat().st_size, evaluate(model, data.test), 1.0)
            self.tracker.log(run_id, metrics={
                "val_accuracy": cand.val_accuracy, "test_accuracy": cand.test_accuracy,
                "latency_ms": latency.median_ms, "latency_p90_ms": latency.p90_ms, "latency_cv": latency.cv,
                "macs": macs, "params": n_params, "onnx_bytes": cand.onnx_bytes,
            }, tags={"autoprune.source": self.baseline_origin}, params={f"hw.{k}": v for k, v in
                                                                        latency.fingerprint.items()})
            (Path(tmp) / "latency.json").write_text(json.dumps(latency.to_dict(), indent=2))
            self.tracker.log_artifacts(run_id, [onnx_path, Path(tmp) / "latency.json"])
        self.tracker.end(run_id)
        self.fingerprint = latency.fingerprint
        log.info("baseline (%s): val %.2f%% test %.2f%% | %.3f ms median (cv %.2f%%, n=%d) | %s params",
                 self.baseline_origin, 100 * cand.val_accuracy, 100 * cand.test_accuracy, cand.latency_ms,
                 100 * latency.cv, latency.n, f"{cand.params:,}")
        return cand

    def _trials(self, baseline: Candidate) -> None:
        n_trials, started = int(self.cfg.search.n_trials), time.perf_counter()
        for i in range(n_trials):
            trial = self.study.ask()
            plan = self.space.suggest(trial)
            t0 = time.perf_counter()
            result = self._one_trial(trial, plan)
            elapsed = time.perf_counter() - started
            eta = elapsed / (i + 1) * (n_trials - i - 1)
            front = len(self.study.best_trials)
            if result is None:
                log.info("trial %d/%d (#%d) FAILED: %s | front %d | %s elapsed, ETA %s", i + 1, n_trials,
                         trial.number, self.study.trials[trial.number].user_attrs.get("fail_reason"), front,
                         _fmt_time(elapsed), _fmt_time(eta))
                continue
            log.info("trial %d/%d (#%d) %.1fs | val %.2f%% | %.3f ms (%.2fx) | %s params | front %d | "
                     "%s elapsed, ETA %s", i + 1, n_trials, trial.number, time.perf_counter() - t0,
                     100 * result.val_accuracy, result.latency.median_ms,
                     baseline.latency_ms / result.latency.median_ms, f"{result.params:,}", front,
                     _fmt_time(elapsed), _fmt_time(eta))

    def _one_trial(self, trial: optuna.Trial, plan: PrunePlan) -> TrialResult | None:
        """Evaluate one plan; a trial that raises is recorded as failed and the search goes on."""
        run_id = self.tracker.start_child(f"trial-{trial.number}", "trial", {
            STUDY: self.study_name, TRIAL_NUMBER: trial.number, STATE: "running"})
        trial.set_user_attr("mlflow_run_id", run_id)
        self.tracker.log(run_id, params={f"ratio.{g}": plan.ratio(g) for g in self.space.groups} |
                         {"importance": plan.importance})
        workdir = self.output_dir / "trials" / f"{trial.number:04d}"
        try:
            result = self.evaluator.evaluate(plan, workdir)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.tracker.log(run_id, tags={STATE: "failed", "autoprune.fail_reason": "interrupted"})
            self.tracker.end(run_id, "KILLED")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
            trial.set_user_attr("fail_reason", reason)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.tracker.log(run_id, tags={STATE: "failed", "autoprune.fail_reason": reason})
            self.tracker.end(run_id, "FAILED")
            return None
        metrics = result.metrics()
        for key in ("latency_p90_ms", "latency_cv", "macs", "params", "onnx_bytes"):
            trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("seconds", result.seconds)
        self.study.tell(trial, [result.val_accuracy, result.latency.median_ms])
        (workdir / "plan.json").write_text(plan.to_json())
        (workdir / "latency.json").write_text(json.dumps(result.latency.to_dict(), indent=2))
        self.tracker.log(run_id, metrics=metrics | {f"seconds_{k}": v for k, v in result.seconds.items()},
                         tags={STATE: "complete"})
        self.tracker.log_artifacts(run_id, [workdir / "plan.json", workdir / "latency.json",
                                            result.onnx_path, result.model_path])
        self.tracker.end(run_id)
        return result

    def _finish(self, baseline: Candidate) -> SearchOutcome:
        """Evaluate the Pareto set once on the test split, tag it in MLflow, write the report."""
        complete = self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        front_trials = sorted(self.study.best_trials, key=lambda t: t.values[1])
        front_numbers = {t.number for t in front_trials}
        runs = {int(r.data.tags[TRIAL_NUMBER]): r for r in self.tracker.trial_runs(self.study_name)}
        front = []
        for t in front_trials:
            run = runs.get(t.number)
            if run is None:
                raise ConfigError(f"trial {t.number} of study {self.study_name} has no MLflow run in "
                                  f"{self.tracker.uri}: use the tracking.uri the study was run with")
            test_acc = run.data.metrics.get("test_accuracy")
            if test_acc is None:
                test_acc = self._test_accuracy(run.info.run_id)
                self.tracker.log(run.info.run_id, metrics={"test_accuracy": test_acc})
            front.append(replace(_candidate_from_trial(t, baseline.latency_ms), test_accuracy=test_acc))
        for number, run in runs.items():
            self.tracker.log(run.info.run_id, tags={PARETO: str(number in front_numbers).lower()})
        others = [_candidate_from_trial(t, baseline.latency_ms) for t in complete if t.number not in front_numbers]
        report_dir = self.output_dir / "report"
        files = write_report(report_dir, baseline, front, others, f"autoprune — {self.study_name}",
                             {"study": self.study_name, "hardware profile": self.profile.name,
                              "completed trials": len(complete),
                              **{f"hw {k}": v for k, v in self.fingerprint.items()}})
        self.tracker.log_artifacts(self.tracker.parent_id, files, "report")
        self.tracker.log(self.tracker.parent_id, metrics={"pareto_size": len(front), "completed_trials": len(complete)})
        return SearchOutcome(self.study_name, self.tracker.parent_id, baseline, front, files, len(complete))

    def _test_accuracy(self, run_id: str) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.tracker.download(run_id, "model.pt", Path(tmp))
            model = torch.load(path, map_location="cpu", weights_only=False)
        return evaluate(model, self.task.data.test)


def print_summary(outcome: SearchOutcome, tracker_ui: str, output_dir: Path) -> None:
    print()
    print(f"Pareto models of study {outcome.study_name} ({outcome.n_complete} completed trials; "
          f"speedup = baseline median latency / model median latency, measured in this run):")
    print(format_table(outcome.baseline, outcome.front))
    print()
    print(f"report:    {output_dir / 'report' / 'report.html'}")
    print(f"outputs:   {output_dir}")
    print(f"MLflow UI: {tracker_ui}   (then open http://127.0.0.1:5000)")
