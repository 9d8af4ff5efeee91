"""Re-time the models near the front at the end of a search, side by side, and let the front follow.

During a search each model is timed once, at its own moment. A busy moment (another worker, a backup, a
browser) makes that one number wrong, and the front and the recommendation follow it: on MiniLM one search
timed a plan 1.85x slower than it runs (docs/BENCHMARKS.md). At the end of the search (`search.retime`,
on by default) the baseline and every model that is on the front, or would join it were it 1 + `margin`
times faster, are timed again: every model once per round, in shuffled order (autoprune.report.recheck). The
drift (the median ratio of re-timed to search-time latency) puts the new figures back on the search's
scale, so models that were not re-timed stay comparable: a re-timed model's latency is its median over
the rounds divided by the drift. Should the corrected front then hold a model that was not re-timed (one a
re-timed model used to dominate), the pass is repeated with it. A model that an earlier invocation
corrected is re-timed again (its correction is kept that way), as is one that broke only `max_latency_ms`
and would meet it were it 1 + `margin` times faster. If re-timing fails, a warning says why and the
front keeps the search-time latencies.

Optuna freezes a finished trial, so the corrected latencies are a study attribute
(`retimed_latency_ms`: trial number or "baseline" -> ms); `front_numbers` and the report
(autoprune.report.collect) read them, so the front, the report, the bundle and `pick` use them. The
trials' own records (Optuna values, MLflow `latency_ms`) keep what the search measured; MLflow trial runs
get `latency_retimed_ms` beside it. A `search.constraints.max_latency_ms` bound is re-checked with the
corrected latency.

Profiles that time the PyTorch module (`runtime: torch`, e.g. the GPU's `cuda-torch`) re-time modules
rebuilt from the trials' weights (weights-only, as `pick` and the report do).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import optuna
from torch import nn

from autoprune.config import RetimeConfig
from autoprune.hw import ExportedModel, Measurer
from autoprune.hw.profile import HardwareProfile
from autoprune.search.loop import BaseObserver
from autoprune.search.objectives import Objectives
from autoprune.search.pareto import non_dominated
from autoprune.track import Tracker

if TYPE_CHECKING:
    from autoprune.report.recheck import Retimed

log = logging.getLogger("autoprune")
RETIMED_ATTR = "retimed_latency_ms"    # a study user attribute: {trial number as text or "baseline": ms}
SUMMARY_ATTR = "retime"                # a study user attribute: what the last re-timing did (data, for the report)
LATENCY = "latency_ms"
BOUND = "max_latency_ms"
MAX_PASSES = 3                         # re-timings of one search end (one, unless the corrected front grows)


def retimed_latencies(study: optuna.Study) -> dict[str, float]:
    """The corrected latencies recorded by the last re-timing, by trial number (as text) or 'baseline'."""
    stored = study.user_attrs.get(RETIMED_ATTR)
    return {str(k): float(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


def _corrected(trial: optuna.trial.FrozenTrial, retimed: Mapping[str, float]) -> tuple[dict, dict]:
    """A complete trial's metrics and constraint values with its corrected latency."""
    metrics = dict(trial.user_attrs)
    constraints = dict(trial.constraints)
    fixed = retimed.get(str(trial.number))
    if fixed is not None and LATENCY in metrics:
        if BOUND in constraints:   # latency - bound: moves with the latency
            constraints[BOUND] += fixed - float(metrics[LATENCY])
        metrics[LATENCY] = fixed
    return metrics, constraints


def corrected_metrics(trial: optuna.trial.FrozenTrial, retimed: Mapping[str, float]) -> tuple[dict, bool]:
    """A complete trial's metrics with its corrected latency, and whether it meets every constraint then."""
    metrics, constraints = _corrected(trial, retimed)
    return metrics, all(v <= 0 for v in constraints.values())


def _points(study: optuna.Study, objectives: Sequence[str], retimed: Mapping[str, float],
            margin: float = 0.0) -> tuple[dict[int, dict], dict[int, dict]]:
    """Complete trials' metrics (latency corrected by `retimed`): those meeting every constraint, and those
    whose only broken bound is `max_latency_ms` and who would meet it were they 1 + `margin` times faster."""
    feasible, over_bound = {}, {}
    for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        metrics, constraints = _corrected(t, retimed)
        if not all(o in metrics for o in objectives):
            continue
        broken = {k for k, v in constraints.items() if v > 0}
        if not broken:
            feasible[t.number] = metrics
        elif broken == {BOUND} and LATENCY in metrics:
            latency = float(metrics[LATENCY])
            if constraints[BOUND] - latency * margin / (1 + margin) <= 0:
                over_bound[t.number] = metrics
    return feasible, over_bound


def front_numbers(study: optuna.Study) -> set[int]:
    """The trial numbers of the front: Optuna's `best_trials`, or, once the end of the search re-timed
    models, the non-dominated feasible trials with their corrected latencies."""
    if not any(k != "baseline" for k in retimed_latencies(study)):
        return {t.number for t in study.best_trials}
    objectives = study.metric_names or ["val_accuracy", LATENCY]
    return non_dominated(_points(study, objectives, retimed_latencies(study))[0], objectives)


def near_front(points: Mapping[int, Mapping[str, float]], objectives: Sequence[str], margin: float) -> list[int]:
    """Trials that are on the front or would join it were their latency `margin` lower (1 + margin times
    faster): the ones a mis-timing could have put on it or kept off it."""
    def faster(metrics: Mapping[str, float]) -> dict:
        return {**metrics, LATENCY: float(metrics[LATENCY]) / (1 + margin)} if LATENCY in metrics else dict(metrics)

    return sorted(n for n, m in points.items()
                  if n in non_dominated({**{k: v for k, v in points.items() if k != n}, n: faster(m)}, objectives))


@dataclass(frozen=True)
class RetimeSummary:
    rounds: int
    drift: float
    models: int
    flagged: list[str]

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "drift": self.drift, "models": self.models, "flagged": list(self.flagged)}


def retime_record(study: optuna.Study) -> dict:
    """What the end-of-search re-timing recorded (RetimeSummary.to_dict()), {} for a study without one."""
    s = study.user_attrs.get(SUMMARY_ATTR)
    return dict(s) if isinstance(s, dict) else {}


def retime_summary(s: Mapping) -> str:
    """One line on the end-of-search re-timing ('' when there was none)."""
    if not s:
        return ""
    flagged = ", ".join(map(str, s.get("flagged") or [])) or "none"
    return (f"{s.get('models', 0)} model(s) near the front re-timed side by side at the end of the search "
            f"({s.get('rounds', 0)} rounds, machine drift {float(s.get('drift', 1.0)):.3f}x); mis-timed in the "
            f"search (beyond ±10 % of the drift): {flagged}")


def _clear(study: optuna.Study) -> None:
    """No re-timing this time: the front reads the search-time latencies again."""
    if study.user_attrs.get(RETIMED_ATTR) or study.user_attrs.get(SUMMARY_ATTR):
        study.set_user_attr(RETIMED_ATTR, {})
        study.set_user_attr(SUMMARY_ATTR, {})


Rebuild = Callable[[optuna.trial.FrozenTrial, Path], nn.Module]   # a trial's module from its weights file


class RetimeObserver(BaseObserver):
    """At the end of the search, before the report: re-time the models near the front (module docstring).
    `baseline` is the deployed baseline (with its module for runtime torch); `rebuild` gives a trial's
    module from its weights, which runtime torch times (None: such profiles are not re-timed)."""

    def __init__(self, config: RetimeConfig, objectives: Objectives, profile: HardwareProfile,
                 backend: Measurer, tracker: Tracker, output_dir: Path, baseline: Optional[ExportedModel],
                 baseline_ms: float, seed: int = 0, rebuild: Optional[Rebuild] = None):
        self.config, self.objectives, self.profile, self.backend = config, objectives, profile, backend
        self.tracker, self.output_dir = tracker, Path(output_dir)
        self.baseline, self.baseline_ms, self.seed, self.rebuild = baseline, baseline_ms, seed, rebuild
        self.rows: list[Retimed] = []

    def on_search_end(self, study: optuna.Study) -> None:
        if LATENCY not in self.objectives.names:
            return
        if not self.config.rounds:
            _clear(study)   # a resumed study shows what this invocation measured, not an earlier re-timing
            return
        if self.profile.runtime == "torch" and self.rebuild is None:
            log.info("search.retime: profile %s times the PyTorch module and no rebuild was given; its front is "
                     "not re-timed", self.profile.name)
            _clear(study)
            return
        try:
            self._retime(study)
        except Exception as exc:   # a correction, not the result: the search's front and report stand without it
            log.warning("search.retime failed (%s: %s); the front keeps the latencies measured during the search",
                        type(exc).__name__, exc)
            self.rows = []
            _clear(study)

    def _retime(self, study: optuna.Study) -> None:
        """Re-time the models near the front; should the corrected front hold a model that was not among
        them (one a re-timed model used to dominate), re-time again with it, at most MAX_PASSES times."""
        picks = self._picks(study, list(self.objectives.names))
        with tempfile.TemporaryDirectory() as tmp:
            models: dict[int, Optional[ExportedModel]] = {}   # fetched once, whatever the passes
            for _ in range(MAX_PASSES):
                if not self._time(study, picks, models, Path(tmp)):
                    _clear(study)
                    return
                # one attribute, replaced whole: a later worker's re-timing leaves nothing of an earlier one behind
                study.set_user_attr(RETIMED_ATTR, {r.label.lstrip("#"): r.retimed_ms / r.drift for r in self.rows})
                joined = front_numbers(study) - picks
                if not joined:
                    break
                picks |= joined
        self._record(study)

    def _picks(self, study: optuna.Study, names: list[str]) -> set[int]:
        """The trials to re-time: near the front with the search-time latencies or with the corrected ones
        of an earlier re-timing (also one that broke only `max_latency_ms` and would meet it 1 + margin
        times faster), and every trial an earlier re-timing corrected (the attribute is replaced whole, so
        a correction is kept only by re-timing)."""
        margin, earlier = self.config.margin, retimed_latencies(study)
        picks: set[int] = set()
        for retimed in ({}, earlier):
            feasible, over_bound = _points(study, names, retimed, margin)
            picks |= set(near_front(feasible, names, margin))
            picks |= {n for n, m in over_bound.items() if n in near_front({**feasible, n: m}, names, margin)}
        complete = {t.number for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])}
        return picks | {int(k) for k in earlier if k.isdigit() and int(k) in complete}

    def _time(self, study: optuna.Study, picks: set[int], fetched: dict[int, Optional[ExportedModel]],
              tmp: Path) -> bool:
        """Time the baseline and the picked trials side by side (self.rows); False when fewer than two
        models could be. `fetched` keeps the trials' models between passes."""
        from autoprune.report.recheck import recheck   # the report package reads this module's front

        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        models = [("baseline", self.baseline, self.baseline_ms)] if self.baseline else []
        for n in sorted(picks):
            if n not in fetched:
                fetched[n] = self._model(trials[n], tmp)
            model = fetched[n]
            if model is not None:
                models.append((f"#{n}", model, float(trials[n].user_attrs[LATENCY])))
        if len(models) < 2:
            return False
        log.info("search.retime: re-timing %d model(s) near the front side by side, %d rounds",
                 len(models), self.config.rounds)
        self.rows = recheck(models, self.profile, self.config.rounds, self.seed, backend=self.backend)
        return True

    def _model(self, trial: optuna.trial.FrozenTrial, tmp: Path) -> Optional[ExportedModel]:
        """The trial's deployed model as the profile times it (runtime torch: with its rebuilt module)."""
        onnx = self._file(trial, "model.onnx", tmp)
        if onnx is None or self.profile.runtime != "torch":
            return None if onnx is None else ExportedModel(onnx)
        weights = self._file(trial, "model.pt", tmp)
        if weights is None or self.rebuild is None:
            return None
        return ExportedModel(onnx, module=self.rebuild(trial, weights))   # weights-only, never unpickled

    def _file(self, trial: optuna.trial.FrozenTrial, name: str, tmp: Path) -> Optional[Path]:
        """A file of the trial: this process's own, else its MLflow run's; None if neither has it."""
        own = self.output_dir / "trials" / f"{trial.number:04d}" / name
        if own.is_file():
            return own
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            return None
        try:
            return self.tracker.download(run_id, name, tmp / f"{trial.number:04d}")
        except Exception as exc:   # MLflow trouble: that model keeps its search-time latency
            log.warning("search.retime: trial #%d's %s not available (%s); not re-timed", trial.number, name, exc)
            return None

    def _record(self, study: optuna.Study) -> None:
        from autoprune.report.recheck import format_recheck, write_recheck

        flagged = [r.label for r in self.rows if r.flagged]
        summary = RetimeSummary(self.config.rounds, self.rows[0].drift, len(self.rows), flagged)
        study.set_user_attr(SUMMARY_ATTR, summary.to_dict())
        log.info("%s", format_recheck(self.rows))
        if flagged:
            log.warning("search.retime: %s timed more than 10 %% off the machine's drift during the search; the "
                        "front uses the re-timed latencies", ", ".join(flagged))
        report_dir = self.output_dir / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        write_recheck(self.rows, report_dir / "retime.csv")
        self._log_mlflow(study)

    def _log_mlflow(self, study: optuna.Study) -> None:
        from autoprune.search.observers import guarded   # observers imports the report, which imports this module

        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for r in self.rows:
            if r.label == "baseline":
                continue
            run_id = trials[int(r.label.lstrip("#"))].user_attrs.get("mlflow_run_id")
            if run_id:
                guarded("re-timed latency", lambda: self.tracker.log(
                    run_id, metrics={"latency_retimed_ms": r.retimed_ms / r.drift}))
        parent = self.tracker.parent_id
        if parent:
            guarded("re-timing summary", lambda: self.tracker.log(
                parent, metrics={"retime_drift": self.rows[0].drift,
                                 "retime_flagged": sum(r.flagged for r in self.rows)}))
