"""`mode=reproduce reproduce.trial=N`: rebuild a trial's model from the baseline and its logged plan,
re-evaluate and re-measure it, and compare with what the search logged.

"Now" is measured now: the rebuilt model's ONNX is timed afresh on the profile (`fresh=True`), never
served from the latency cache that the search filled."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna

from autoprune.config import AppConfig
from autoprune.context import build_context
from autoprune.errors import ConfigError, few
from autoprune.hw.export import ExportedModel
from autoprune.search.existing import load_existing, study_config
from autoprune.plan import PrunePlan
from autoprune.track.mlflow_tracker import TRIAL_NUMBER
from autoprune.weights import load_weights, shapes


@dataclass(frozen=True)
class Reproduction:
    trial: int
    same_architecture: bool
    logged: dict      # val_accuracy, latency_ms, params, macs as logged by the search
    now: dict         # the same, measured now

    def table(self) -> str:
        rows = [f"{'':14}{'logged':>12}{'now':>12}   (now: rebuilt, re-evaluated and re-measured, not cached)"]
        for key, fmt in (("val_accuracy", "{:.4f}"), ("latency_ms", "{:.4f}"), ("params", "{:,.0f}"),
                         ("macs", "{:,.0f}")):
            rows.append(f"{key:14}{fmt.format(self.logged[key]):>12}{fmt.format(self.now[key]):>12}")
        rows.append(f"{'architecture':14}{'':>12}{'same' if self.same_architecture else 'DIFFERENT':>12}")
        return "\n".join(rows)


def _run_of(tracker, study_name: str, number: int) -> str:
    """The MLflow run of a trial that Optuna has no run id for (its run was made by reconciliation)."""
    for run in tracker.trial_runs(study_name):
        if run.data.tags.get(TRIAL_NUMBER) == str(number):
            return run.info.run_id
    raise ConfigError(f"trial {number} of study '{study_name}' has no MLflow run in this experiment: use the "
                      "tracking.uri and tracking.experiment the search ran with")


def run_reproduce(cfg: AppConfig, output_dir: Path) -> Reproduction:
    if cfg.reproduce.trial is None:
        raise ConfigError("reproduce needs a trial number: add reproduce.trial=<N> (see the report's model column)")
    study, tracker = load_existing(cfg)
    number = cfg.reproduce.trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(number)
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
        done = sorted(n for n, t in trials.items() if t.state == optuna.trial.TrialState.COMPLETE)
        fix = "set reproduce.trial to one of them" if done else "run the search first"
        problem = (f"study '{study.study_name}' has no trial {number}" if trial is None else
                   f"trial {number} of study '{study.study_name}' did not complete ({trial.state.name.lower()})")
        raise ConfigError(f"{problem}; completed trials: {few(done)}: {fix}")
    stored = study_config(study, cfg)   # data: its _target_s are checked against an allow-list
    ctx = build_context(stored)
    plan = PrunePlan.from_dict(trial.user_attrs["plan"])
    result = ctx.evaluator.evaluate(plan, Path(output_dir) / "reproduce" / f"trial-{number:04d}")
    # the evaluation timed the architecture through the latency cache the search filled: time it again now
    module = ctx.evaluator.rebuild(plan, result.model_path)
    latency = ctx.backend.measure(ExportedModel(result.onnx_path, result.model_path, module), ctx.profile, fresh=True)
    run_id = trial.user_attrs.get("mlflow_run_id") or _run_of(tracker, study.study_name, number)
    with tempfile.TemporaryDirectory() as tmp:   # weights only: a crafted model.pt is refused, never run
        logged_weights = load_weights(tracker.download(run_id, "model.pt", Path(tmp)))
    metrics = tracker.run_metrics(run_id)
    logged = {k: metrics[k] for k in ("val_accuracy", "latency_ms", "params", "macs")}
    now = {"val_accuracy": result.val_accuracy, "latency_ms": latency.median_ms,
           "params": result.params, "macs": result.macs}
    return Reproduction(number, shapes(logged_weights) == shapes(load_weights(result.model_path)), logged, now)
