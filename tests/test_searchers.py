"""Searchers, objectives and constraints on real Optuna studies (synthetic metrics: no training)."""

from __future__ import annotations

import math

import optuna
import pytest

from autoprune.errors import ConfigError
from autoprune.search.objectives import Objectives
from autoprune.search.searchers import (NniSearcher, OptunaSearcher, UniformGridSearcher, _coarse_to_fine,
                                        make_sampler)
from autoprune.search.space import build_space

GROUPS = ["a", "b", "c"]


def fake_metrics(plan):
    """A smooth synthetic trade-off: pruning more is faster and less accurate."""
    mean = sum(plan.ratio(g) for g in GROUPS) / len(GROUPS)
    return {"val_accuracy": 0.99 - 0.2 * mean ** 2, "latency_ms": 1.0 - 0.8 * mean, "params": 1000 * (1 - mean),
            "macs": 5000 * (1 - mean), "onnx_bytes": 4000 * (1 - mean)}


def run_searcher(searcher, space, objectives, n):
    plans = []
    for _ in range(n):
        trial = searcher.ask()
        plan = space.suggest(trial)
        metrics = fake_metrics(plan)
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        for name, value in objectives.violations(metrics).items():
            trial.set_constraint(name, value)
        searcher.tell(trial, objectives.values(metrics), metrics)
        plans.append(plan)
    return plans


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random", "qmc"])
def test_every_optuna_sampler_completes_trials(sampler):
    space, objectives = build_space({}, GROUPS), Objectives()
    study = optuna.create_study(directions=objectives.directions, sampler=make_sampler(sampler, 0, 4))
    run_searcher(OptunaSearcher(study), space, objectives, 7)
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 7
    assert study.best_trials


def test_unknown_sampler():
    with pytest.raises(ConfigError, match="unknown search.sampler 'annealing'"):
        make_sampler("annealing", 0)


def test_uniform_grid_spreads_coarse_to_fine_and_never_repeats():
    assert _coarse_to_fine(5) == [0, 4, 2, 1, 3]
    space = build_space({"ratio": {"low": 0.0, "high": 0.8, "step": 0.1}}, GROUPS)
    study = optuna.create_study(directions=Objectives().directions, sampler=make_sampler("uniform", 0))
    plans = run_searcher(UniformGridSearcher(study, space), space, Objectives(), 5)
    ratios = [plans[i].ratio("a") for i in range(5)]
    assert ratios == [0.0, 0.8, 0.4, 0.2, 0.6]
    assert all(len({p.ratio(g) for g in GROUPS}) == 1 for p in plans)


def test_the_uniform_sweep_ends_once_every_grid_ratio_has_a_trial_and_asks_a_waiting_retry_first():
    space = build_space({"ratio": {"low": 0.0, "high": 0.8, "step": 0.2}}, GROUPS)
    study = optuna.create_study(directions=Objectives().directions, sampler=make_sampler("uniform", 0))
    searcher = UniformGridSearcher(study, space)
    plans = run_searcher(searcher, space, Objectives(), 5)
    assert sorted(p.ratio("a") for p in plans) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert searcher.ask() is None and len(study.trials) == 5   # done: nothing enqueued, nothing repeated
    study.enqueue_trial(space.encode(space.uniform(0.4)))       # a retry of a lost trial
    retry = searcher.ask()
    assert retry is not None and space.suggest(retry) == space.uniform(0.4)
    assert len(study.trials) == 6


def test_constraints_make_the_front_feasible():
    space = build_space({}, GROUPS)
    objectives = Objectives.from_config(["val_accuracy", "latency_ms"], {"max_latency_ms": 0.7, "min_accuracy": None})
    assert objectives.bounds == (("max_latency_ms", 0.7),)
    study = optuna.create_study(directions=objectives.directions, sampler=make_sampler("random", 1))
    run_searcher(OptunaSearcher(study), space, objectives, 12)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert any(t.user_attrs["latency_ms"] > 0.7 for t in complete), "the test needs infeasible trials"
    assert study.best_trials and all(t.user_attrs["latency_ms"] <= 0.7 for t in study.best_trials)


def test_accuracy_drop_is_relative_to_the_baseline():
    objectives = Objectives.from_config(["val_accuracy", "latency_ms"], {"max_accuracy_drop": 0.05})
    baseline = {"val_accuracy": 0.99, "latency_ms": 1.0}
    assert objectives.violations({"val_accuracy": 0.95}, baseline)["max_accuracy_drop"] == pytest.approx(-0.01)
    assert objectives.violations({"val_accuracy": 0.90}, baseline)["max_accuracy_drop"] == pytest.approx(0.04)
    assert objectives.violations({"val_accuracy": 0.90}, {"val_accuracy": 0.94})["max_accuracy_drop"] <= 0
    with pytest.raises(ValueError, match="relative to the baseline"):
        objectives.violations({"val_accuracy": 0.95})


def test_objectives_can_be_any_metrics():
    objectives = Objectives.from_config(["val_accuracy", "macs", "params"])
    assert objectives.directions == ["maximize", "minimize", "minimize"]
    assert objectives.values({"val_accuracy": 0.9, "macs": 5.0, "params": 3.0, "latency_ms": 1.0}) == [0.9, 5.0, 3.0]


@pytest.mark.parametrize("names, constraints, message", [
    (["accuracy"], None, "search.objectives \\['accuracy'\\]"),
    ([], None, "search.objectives"),
    (["val_accuracy", "val_accuracy"], None, "repeats"),
    (["val_accuracy"], {"max_latency": 1.0}, "unknown key\\(s\\) \\['max_latency'\\]"),
    (["val_accuracy"], {"max_accuracy_drop": 1.5}, "max_accuracy_drop=1.5 is outside \\[0, 1\\].*=0.01 for 1 point"),
])
def test_bad_objectives(names, constraints, message):
    with pytest.raises(ConfigError, match=message):
        Objectives.from_config(names, constraints)


@pytest.mark.parametrize("tuner", ["tpe", "evolution", "anneal", "random"])
def test_nni_tuners_propose_into_the_optuna_study(tuner):
    pytest.importorskip("nni")
    space = build_space({"importance": ["l2", "l1"]}, GROUPS)
    objectives = Objectives()
    study = optuna.create_study(directions=objectives.directions, sampler=make_sampler("uniform", 0))
    searcher = NniSearcher(study, space, tuner, seed=0, speedup_weight=0.02, baseline_latency_ms=1.0)
    plans = run_searcher(searcher, space, objectives, 6)
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 6
    grid = {round(0.05 * k, 10) for k in range(18)}
    assert all(p.ratio(g) in grid for p in plans for g in GROUPS) and {p.importance for p in plans} <= {"l2", "l1"}
    metrics = fake_metrics(plans[0])
    assert searcher.score(metrics) == pytest.approx(metrics["val_accuracy"] + 0.02 * math.log2(1.0 / metrics["latency_ms"]))
    resumed = NniSearcher(study, space, tuner, seed=0, speedup_weight=0.02, baseline_latency_ms=1.0)
    run_searcher(resumed, space, objectives, 1)  # learns from the study's history, then goes on
    assert len(study.trials) == 7
