"""The Searcher contract, run by every registered searcher (as Optuna's BasicSamplerTestCase is by its
samplers): built through the registry, it proposes plans inside the space into the Optuna study, and
records complete, failed and pruned trials there; a new searcher on the same study resumes it.
NNI tuners run when NNI is installed (`pip install 'autoprune[nni]'`), else skip with that reason."""

from __future__ import annotations

import importlib.util

import optuna
import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.search.objectives import Objectives
from autoprune.hw.predictor import LayerSpec, MacsModel
from autoprune.search.allocate import AllocationInputs
from autoprune.search.searchers import (BACKENDS, NNI_TUNERS, OPTUNA_SAMPLERS, SEARCHERS, AllocationSearcher,
                                        NniSearcher, OptunaSearcher, SearcherSettings, UniformGridSearcher,
                                        make_sampler, searcher_class)
from autoprune.search.space import build_space

GROUPS = ["a", "b", "c"]
HAS_NNI = importlib.util.find_spec("nni") is not None
State = optuna.trial.TrialState

# (search.backend, search.sampler, search.nni.tuner) -> the class the registry must give
CASES = {
    **{f"optuna-{s}": ("optuna", s, "tpe", OptunaSearcher) for s in OPTUNA_SAMPLERS},
    "optuna-uniform": ("optuna", "uniform", "tpe", UniformGridSearcher),
    "optuna-allocate": ("optuna", "allocate", "tpe", AllocationSearcher),
    **{f"nni-{t}": ("nni", "tpe", t, NniSearcher) for t in NNI_TUNERS},
}


def allocation_inputs() -> AllocationInputs:
    """A chain of Linear layers 16 -> a -> b -> c -> 10 (20 channels each) and seeded channel importances."""
    chain = [None, *GROUPS, None]
    widths = {g: 20 for g in GROUPS}
    layers = [LayerSpec(f"fc{i}", "linear", widths.get(chain[i], 16), widths.get(chain[i + 1], 10),
                        (1, widths.get(chain[i], 16)), chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
    torch.manual_seed(0)
    return AllocationInputs({g: torch.rand(20) for g in GROUPS}, MacsModel(widths, layers), "MACs")


def metrics_of(plan) -> dict:
    mean = sum(plan.ratio(g) for g in GROUPS) / len(GROUPS)
    return {"val_accuracy": 0.99 - 0.2 * mean ** 2, "latency_ms": 1.0 - 0.8 * mean}


def build(case: str, study: optuna.Study | None = None):
    backend, sampler, tuner, expected = CASES[case]
    if backend == "nni" and not HAS_NNI:
        pytest.skip("NNI is not installed (pip install 'autoprune[nni]')")
    space = build_space({"ratio": {"low": 0.0, "high": 0.8, "step": 0.1}}, GROUPS)
    objectives = Objectives()
    study = study or optuna.create_study(directions=objectives.directions, sampler=make_sampler(sampler, 0, 4))
    cls = searcher_class(backend, sampler)
    assert cls is expected
    settings = SearcherSettings(seed=0, nni_tuner=tuner, speedup_weight=0.02, baseline_latency_ms=1.0,
                                allocation=allocation_inputs() if sampler == "allocate" else None)
    return cls.build(study, space, settings), space, objectives, study


def complete(searcher, space, objectives, trial) -> None:
    plan = space.suggest(trial)
    metrics = metrics_of(plan)
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    searcher.tell(trial, objectives.values(metrics), metrics)


@pytest.mark.parametrize("case", list(CASES))
def test_proposals_stay_in_the_space_and_complete_in_the_study(case):
    searcher, space, objectives, study = build(case)
    grid = {round(0.1 * k, 9) for k in range(9)}
    for _ in range(5):
        trial = searcher.ask()
        assert isinstance(trial, optuna.Trial) and study.trials[trial.number].state == State.RUNNING
        plan = space.suggest(trial)
        assert set(plan.groups) == set(GROUPS) and all(round(plan.ratio(g), 9) in grid for g in GROUPS)
        complete(searcher, space, objectives, trial)
    assert [t.state for t in study.trials] == [State.COMPLETE] * 5
    assert study.best_trials


@pytest.mark.parametrize("case", list(CASES))
def test_failed_and_pruned_trials_are_recorded_and_the_search_goes_on(case):
    searcher, space, objectives, study = build(case)
    failed = searcher.ask()
    space.suggest(failed)
    searcher.tell(failed, None, None)
    pruned = searcher.ask()
    space.suggest(pruned)
    searcher.tell(pruned, None, None, State.PRUNED)
    complete(searcher, space, objectives, searcher.ask())
    assert [t.state for t in study.trials] == [State.FAIL, State.PRUNED, State.COMPLETE]


@pytest.mark.parametrize("case", list(CASES))
def test_a_new_searcher_resumes_the_same_study(case):
    searcher, space, objectives, study = build(case)
    for _ in range(3):
        complete(searcher, space, objectives, searcher.ask())
    again, *_ = build(case, study)
    complete(again, space, objectives, again.ask())
    assert len(study.trials) == 4 and all(t.state == State.COMPLETE for t in study.trials)


def test_every_registered_searcher_declares_its_backend_and_samplers():
    assert set(BACKENDS) == {"optuna", "nni"}
    served = [s for cls in SEARCHERS if cls.backend == "optuna" for s in cls.samplers]
    assert sorted(served) == sorted([*OPTUNA_SAMPLERS, "uniform", "allocate"]) and len(served) == len(set(served))
    with pytest.raises(ConfigError, match="unknown search.backend 'ray': choose optuna or nni"):
        searcher_class("ray", "tpe")
