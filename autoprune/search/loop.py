"""The search loop: claim a trial within the budget (ask) → evaluate its plan → tell Optuna; observers
see each step through one interface, in Optuna's callback style.

    loop = SearchLoop(study, searcher, space, evaluator, objectives, baseline, budget, observers=[...])
    loop.run()

Everything else a search does (MLflow runs, the progress line, heartbeats, the report) is an
`Observer` (autoprune.search.observers). The loop owns only what must happen in one place:

- interrupts (autoprune.interrupts): Ctrl-C / SIGTERM are held for the whole loop and land between
  two trials (`interrupts.check()` before a claim) or in a trial's evaluation, which they fail and
  retry; never between ask and tell, nor while observers open or close a trial's records;
- the trial limit (`search.trial_timeout_s`), which fails the trial and lets the search go on;
- stale trials: a trial whose worker stopped beating is failed by Optuna (`fail_stale_trials`), then
  each observer sees it end `lost` (`StaleTrialHandler` has already enqueued its retry);
- the search's time limit (`search.timeout_s`): no trial starts after it, the one running finishes;
- a searcher with nothing left to propose (`ask()` gives None: the uniform sweep, done) ends the search;
- multi-fidelity candidates (`search.fidelity`, autoprune.search.fidelity): each plan is scored at rung 0
  first; observers see `on_rung_end`, and a candidate that is not promoted ends `candidate` (told PRUNED);
- the front's hypervolume after each trial, computed once and passed to every observer in the outcome.

Every started trial ends exactly once with a `TrialOutcome`, even when the loop itself raises.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import optuna

from autoprune import interrupts
from autoprune.candidate import TrialResult
from autoprune.plan import PrunePlan
from autoprune.search.deadline import deadline
from autoprune.search.early_stop import ParetoStopper
from autoprune.search.fidelity import RUNG0_ATTR, RungOutcome, Rung0Step
from autoprune.search.objectives import Objectives
from autoprune.search.pareto import front_hypervolume
from autoprune.search.searchers import Searcher
from autoprune.search.space import SearchSpace
from autoprune.search.workers import INTERRUPTED_ATTR, StaleTrialHandler, budget_used, claim

log = logging.getLogger("autoprune")

Monitor = Callable[[int, float, float], None]   # (epoch, val accuracy, latency ms) during the recovery


class Evaluator(Protocol):
    """What the loop asks of an evaluator (autoprune.candidate.CandidateEvaluator, or one wrapping it)."""

    def evaluate(self, plan: PrunePlan, workdir: Path, monitor: Optional[Monitor] = None) -> TrialResult: ...


COMPLETE, PRUNED, FAILED, INTERRUPTED, LOST = "complete", "pruned", "failed", "interrupted", "lost"
CANDIDATE = "candidate"   # scored at rung 0 and not promoted (multi-fidelity): told PRUNED, never on the front


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended. `state`: complete (result and metrics set), pruned (stopped early),
    candidate (scored at rung 0, not promoted: `rung` set), failed (its evaluation raised or ran past the
    trial limit), interrupted (Ctrl-C / SIGTERM: retried), lost (its worker died: found by this worker,
    retried). `rung`: its rung-0 score and promotion (multi-fidelity searches). `hypervolume`, `completed`,
    `candidates`: the study's front after this trial (the normalised hypervolume of its feasible complete
    trials, how many trials completed, how many were scored at rung 0); None when it ended without a tell."""

    state: str
    reason: Optional[str] = None
    result: Optional[TrialResult] = None
    metrics: dict = field(default_factory=dict)
    position: int = 0          # the trial's place in the budget (1-based), 0 for a lost trial
    seconds: float = 0.0       # wall time of the trial in this loop
    workdir: Optional[Path] = None
    rung: Optional[RungOutcome] = None
    hypervolume: Optional[float] = None
    completed: Optional[int] = None
    candidates: Optional[int] = None

    @classmethod
    def lost(cls, reason: str) -> "TrialOutcome":
        return cls(LOST, reason)


class Observer(Protocol):
    """What sees a search. Every hook is called for every observer, in the order given to the loop."""

    def on_search_start(self, study: optuna.Study) -> None: ...

    def on_trial_start(self, study: optuna.Study, trial: optuna.Trial) -> None: ...

    def on_rung_end(self, study: optuna.Study, trial: optuna.Trial, rung: RungOutcome) -> None:
        """Multi-fidelity: the trial's candidate was scored at rung 0 and promoted or not."""

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None: ...

    def on_search_end(self, study: optuna.Study) -> None: ...


class BaseObserver:
    """An Observer that does nothing: subclasses override the hooks they need."""

    def on_search_start(self, study: optuna.Study) -> None:
        pass

    def on_trial_start(self, study: optuna.Study, trial: optuna.Trial) -> None:
        pass

    def on_rung_end(self, study: optuna.Study, trial: optuna.Trial, rung: RungOutcome) -> None:
        pass

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.BaseTrial, outcome: TrialOutcome) -> None:
        pass

    def on_search_end(self, study: optuna.Study) -> None:
        pass


@dataclass(frozen=True)
class Budget:
    """`search.n_trials` for the study, or for the run group shared by all its workers."""

    n_trials: int
    storage_url: str
    group: Optional[str] = None

    def used(self, study: optuna.Study) -> int:
        return budget_used(study, self.group)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]


class SearchLoop:
    def __init__(self, study: optuna.Study, searcher: Searcher, space: SearchSpace, evaluator: Evaluator,
                 objectives: Objectives, baseline: dict, budget: Budget, output_dir: Path,
                 observers: Sequence[Observer] = (), stale: Optional[StaleTrialHandler] = None,
                 stopper: Optional[ParetoStopper] = None, trial_timeout_s: Optional[float] = None,
                 check_stale: bool = False, clock: Callable[[], float] = time.perf_counter,
                 rung0: Optional[Rung0Step] = None, max_drop: float = 0.1, timeout_s: Optional[float] = None):
        self.study, self.searcher, self.space, self.evaluator = study, searcher, space, evaluator
        self.objectives, self.baseline, self.budget, self.output_dir = objectives, baseline, budget, Path(output_dir)
        self.observers = list(observers)
        self.stale = stale if stale is not None else StaleTrialHandler(0)
        self.stopper, self.trial_timeout_s, self.check_stale, self.clock = stopper, trial_timeout_s, check_stale, clock
        self.rung0, self.max_drop, self.timeout_s = rung0, max_drop, timeout_s

    def _notify(self, hook: str, *args) -> None:
        for observer in self.observers:
            getattr(observer, hook)(self.study, *args)

    def run(self) -> None:
        """Trials until the budget is spent; then `on_search_end` (not reached when the loop raises)."""
        # Ctrl-C / SIGTERM land between two trials or in a trial's evaluation (which they fail and retry):
        # never between ask and tell, nor while a trial's records are opened or closed.
        with interrupts.held():
            self._notify("on_search_start")
            started = self.clock() if self.timeout_s is not None else 0.0
            for i in itertools.count():
                if self.timeout_s is not None and self.clock() - started >= self.timeout_s:
                    log.info("search.timeout_s=%g reached after %d trial(s) of this run: no more trials (the "
                             "study keeps them; run again to go on)", self.timeout_s, i)
                    break
                trial = self._next_trial()
                if trial is None:
                    if i == 0 and self.budget.used(self.study) >= self.budget.n_trials:
                        log.info("the budget of %d trials is spent: nothing to run (raise search.n_trials to run more)",
                                 self.budget.n_trials)
                    break
                self._run_trial(trial, self.budget.used(self.study))
        self._notify("on_search_end")

    def _next_trial(self) -> Optional[optuna.Trial]:
        interrupts.check()  # a signal held during the last trial's bookkeeping ends the search here
        if self.check_stale:
            optuna.storages.fail_stale_trials(self.study)
            for lost in self.stale.take_lost():  # a worker that stopped beating: its records are closed
                self._notify("on_trial_end", lost, TrialOutcome.lost("worker lost (no heartbeat)"))
        return claim(self.study, self.budget.storage_url, self.budget.group, self.budget.n_trials, self.searcher.ask)

    def _run_trial(self, trial: optuna.Trial, position: int) -> None:
        started = self.clock()
        plan = self.space.suggest(trial)
        trial.set_user_attr("plan", plan.to_dict())
        workdir = self.output_dir / "trials" / f"{trial.number:04d}"
        outcome: Optional[TrialOutcome] = None
        try:
            self._notify("on_trial_start", trial)
            outcome = self._with_front(self._evaluate_and_tell(trial, plan, workdir, position, started))
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: failed, records closed, retried like a killed trial (a second signal waits
            # until this is done: autoprune.interrupts)
            outcome = TrialOutcome(INTERRUPTED, "interrupted", position=position, workdir=workdir,
                                   seconds=self.clock() - started)
            raise
        except BaseException as exc:  # the bookkeeping itself failed: records are closed, the search ends
            outcome = TrialOutcome(FAILED, one_line(exc), position=position, workdir=workdir,
                                   seconds=self.clock() - started)
            raise
        finally:
            if outcome is not None:
                self._notify("on_trial_end", trial, outcome)
            if outcome is not None and outcome.state == INTERRUPTED:
                self.stale.retry(self.study, self.study.trials[trial.number])

    def _with_front(self, outcome: TrialOutcome) -> TrialOutcome:
        """The outcome with the study's front after it: hypervolume, completed trials, rung-0 candidates."""
        hv, completed = front_hypervolume(self.study, self.objectives, self.baseline, self.max_drop)
        candidates = sum(1 for t in self.study.get_trials(deepcopy=False) if RUNG0_ATTR in t.user_attrs)
        return replace(outcome, hypervolume=hv, completed=completed, candidates=candidates)

    def _remaining(self, started: float) -> Optional[float]:
        """What is left of the trial limit (search.trial_timeout_s) after `started`."""
        if self.trial_timeout_s is None:
            return None
        return max(self.trial_timeout_s - (self.clock() - started), 1e-3)

    def _evaluate_and_tell(self, trial: optuna.Trial, plan: PrunePlan, workdir: Path, position: int,
                           started: float) -> TrialOutcome:
        """Evaluate one plan (multi-fidelity: rung 0 first; a candidate not promoted is told pruned). A
        trial that raises or runs past the trial limit is told failed with its reason (a stopped one:
        pruned) and the search goes on; an interrupt is told failed and re-raised."""
        monitor = self.stopper.monitor(trial) if self.stopper else None
        rung: Optional[RungOutcome] = None
        try:
            if self.rung0 is not None:
                with interrupts.allowed(), deadline(self._remaining(started), self.trial_timeout_s):
                    rung = self.rung0.run(self.study, trial, plan)
                self._notify("on_rung_end", trial, rung)
                if not rung.promoted:
                    self.searcher.tell(trial, None, None, optuna.trial.TrialState.PRUNED)
                    return TrialOutcome(CANDIDATE, rung.promotion.reason, position=position, workdir=workdir,
                                        seconds=self.clock() - started, rung=rung)
            with interrupts.allowed(), deadline(self._remaining(started), self.trial_timeout_s):
                result = self.evaluator.evaluate(plan, workdir, monitor)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("stop_reason", str(exc))
            self.searcher.tell(trial, None, None, optuna.trial.TrialState.PRUNED)
            return TrialOutcome(PRUNED, str(exc), position=position, workdir=workdir, seconds=self.clock() - started,
                                rung=rung)
        except (Exception, KeyboardInterrupt) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted" if interrupted else one_line(exc)
            trial.set_user_attr("fail_reason", reason)
            if interrupted:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
            self.searcher.tell(trial, None, None)
            if interrupted:
                raise
            return TrialOutcome(FAILED, reason, position=position, workdir=workdir, seconds=self.clock() - started,
                                rung=rung)
        metrics = result.metrics()
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", result.seconds)
        if result.repaired:  # the plan asked more of a group than it can give: what was built instead
            trial.set_user_attr("repaired", result.repaired)
        for name, value in self.objectives.violations(metrics, self.baseline).items():
            trial.set_constraint(name, value)
        self.searcher.tell(trial, self.objectives.values(metrics), metrics)
        (workdir / "plan.json").write_text(plan.to_json())
        (workdir / "latency.json").write_text(json.dumps(result.latency.to_dict(), indent=2))
        return TrialOutcome(COMPLETE, None, result, metrics, position, self.clock() - started, workdir, rung)


__all__ = ["BaseObserver", "Budget", "CANDIDATE", "Observer", "SearchLoop", "TrialOutcome"]
