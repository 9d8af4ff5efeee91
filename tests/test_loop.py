"""SearchLoop and its observers on a real Optuna study (SQLite), with a stand-in evaluator: the loop's
contract (budget, outcomes, tell, hooks, retry of interrupted trials, the progress line) without
training or measuring anything."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

from autoprune.candidate import TrialResult
from autoprune.hw import LatencyStats
from autoprune.search.loop import COMPLETE, FAILED, INTERRUPTED, PRUNED, BaseObserver, Budget, SearchLoop
from autoprune.search.objectives import Objectives
from autoprune.search.observers import ProgressObserver
from autoprune.search.searchers import OptunaSearcher, UniformGridSearcher, make_sampler
from autoprune.search.space import build_space
from autoprune.search.workers import StaleTrialHandler

State = optuna.trial.TrialState
BASELINE = {"val_accuracy": 0.99, "latency_ms": 1.0}


class Scripted:
    """Evaluates trial i by the i-th step of a script: a val accuracy, or an exception to raise."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0

    def evaluate(self, plan, workdir: Path, monitor=None) -> TrialResult:
        step = self.script[self.calls]
        self.calls += 1
        if isinstance(step, BaseException):
            raise step
        workdir.mkdir(parents=True, exist_ok=True)
        latency = LatencyStats.from_samples([0.5, 0.5, 0.6], {"runtime": "test"})
        return TrialResult(plan, step, latency, 100, 10, 1, workdir / "model.onnx", workdir / "model.pt")


class Recorder(BaseObserver):
    def __init__(self):
        self.events = []

    def on_search_start(self, study):
        self.events.append("start")

    def on_trial_start(self, study, trial):
        self.events.append(("trial", trial.number))

    def on_trial_end(self, study, trial, outcome):
        self.events.append((outcome.state, trial.number, outcome.position, outcome.reason))

    def on_search_end(self, study):
        self.events.append("end")


def make_loop(tmp_path, script, n_trials, observers, clock=None, space=None, searcher=OptunaSearcher):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    objectives = Objectives()
    study = optuna.create_study(storage=url, directions=objectives.directions, sampler=make_sampler("random", 0))
    space = space or build_space({}, ["a", "b"])
    stale = StaleTrialHandler(max_retry=1)
    extra = {"clock": clock} if clock else {}
    loop = SearchLoop(study, searcher(study) if searcher is OptunaSearcher else searcher(study, space), space,
                      Scripted(script), objectives, BASELINE, Budget(n_trials, url), tmp_path, observers,
                      stale=stale, **extra)
    return loop, study


def test_the_loop_asks_evaluates_tells_and_every_observer_sees_each_trial_end_once(tmp_path):
    recorder = Recorder()
    loop, study = make_loop(tmp_path, [0.9, RuntimeError("export broke"), optuna.TrialPruned("hopeless"), 0.8],
                            n_trials=4, observers=[recorder])
    loop.run()
    assert [t.state for t in study.trials] == [State.COMPLETE, State.FAIL, State.PRUNED, State.COMPLETE]
    assert recorder.events == [
        "start",
        ("trial", 0), (COMPLETE, 0, 1, None),
        ("trial", 1), (FAILED, 1, 2, "RuntimeError: export broke"),
        ("trial", 2), (PRUNED, 2, 3, "hopeless"),
        ("trial", 3), (COMPLETE, 3, 4, None),
        "end"]
    assert study.trials[1].user_attrs["fail_reason"] == "RuntimeError: export broke"
    assert study.trials[0].user_attrs["val_accuracy"] == 0.9 and "plan" in study.trials[0].user_attrs
    assert (tmp_path / "trials" / "0000" / "plan.json").is_file()
    loop.run()   # the budget is spent: nothing more runs
    assert len(study.trials) == 4 and recorder.events[-2:] == ["start", "end"]


def test_a_searcher_with_nothing_left_to_propose_ends_the_search_within_the_budget(tmp_path, caplog):
    recorder = Recorder()
    space = build_space({"ratio": {"low": 0.0, "high": 0.5, "step": 0.25}}, ["a", "b"])  # 3 uniform plans
    loop, study = make_loop(tmp_path, [0.9, 0.8, 0.7], n_trials=10, observers=[recorder], space=space,
                            searcher=UniformGridSearcher)
    with caplog.at_level(logging.INFO, logger="autoprune"):
        loop.run()
    assert [t.state for t in study.trials] == [State.COMPLETE] * 3 and recorder.events[-1] == "end"
    assert "the uniform sweep is done: every one of its 3 ratios has a trial" in caplog.text
    assert "budget" not in caplog.text


def test_an_interrupted_trial_is_closed_retried_and_ends_the_search(tmp_path):
    recorder = Recorder()
    loop, study = make_loop(tmp_path, [0.9, KeyboardInterrupt()], n_trials=3, observers=[recorder])
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert recorder.events[-1] == (INTERRUPTED, 1, 2, "interrupted") and "end" not in recorder.events
    assert [t.state for t in study.trials] == [State.COMPLETE, State.FAIL, State.WAITING]  # the retry waits
    assert study.trials[2].params == study.trials[1].params


def test_the_progress_line_uses_the_injected_clock(tmp_path, caplog):
    ticks = iter(range(0, 1000, 10))
    clock = lambda: float(next(ticks))  # noqa: E731  every reading is 10 s after the last
    loop, _ = make_loop(tmp_path, [0.9, RuntimeError("x")], n_trials=2, observers=[], clock=clock)
    loop.observers.append(ProgressObserver(BASELINE, loop.budget, clock=clock))
    with caplog.at_level(logging.INFO, logger="autoprune"):
        loop.run()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    assert lines[0].startswith("trial 1/2 (#0) 10.0s | val 90.00% | 0.500 ms (2.00x) | 10 params | front 1 | hv ")
    assert lines[1].startswith("trial 2/2 (#1) FAILED: RuntimeError: x | front 1")
    assert lines[1].endswith("elapsed, ETA 0:00")
