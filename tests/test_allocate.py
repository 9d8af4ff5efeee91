"""HALP-style allocation under a latency budget: on a real small ResNet with its real channel importances and
the MACs model built from its layers, on a calibrated-style latency table, and as a search's warm start."""

from __future__ import annotations

import optuna
import pytest
import torch

from setups import prunable_resnet

from autoprune.config import AppConfig
from autoprune.errors import ConfigError
from autoprune.hw.predictor import LatencyTable, LayerSpec, MacsModel, layer_macs
from autoprune.plan import PrunePlan
from autoprune.search.allocate import (AllocationInputs, _grid, allocate, allocate_fractions, allocation_inputs,
                                       warm_start_plans)
from autoprune.search.checks import check_search
from autoprune.search.runner import Search
from autoprune.search.searchers import AllocationSearcher, SearcherSettings, make_sampler
from autoprune.search.space import build_space


@pytest.fixture(scope="module")
def setup():
    r = prunable_resnet()
    return r.model, r.pruner, r.space, MacsModel(r.widths, r.layers, 8), r.pruner.channel_scores(r.model, "l2")


def _steps_up(space, plan):
    """Every plan one grid step wider than `plan` in one dimension."""
    for d in space.dimensions:
        r = plan.ratio(d.groups[0])
        if r > d.range.low:
            wider = dict(plan.groups) | {g: type(plan.groups[g])(round(r - d.range.step, 10)) for g in d.groups}
            yield PrunePlan(wider, plan.importance)


def test_macs_model_counts_the_layers_multiply_adds(setup):
    model, pruner, space, macs, _ = setup
    stem = next(s for s in macs.layers if s.name == "stem.0")
    assert layer_macs(stem) == 24 * 24 * 16 * 1 * 9        # 3x3 conv, 1 -> 16 channels, 24x24 output
    dw = LayerSpec("dw", "conv2d", 8, 8, (1, 8, 10, 10), "g", "g", True,
                   {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 8})
    assert layer_macs(dw) == 8 * 9 * 5 * 5
    assert macs.predict_plan(PrunePlan({})) > macs.predict_plan(space.uniform(0.5)) > macs.predict_plan(space.upper())


def test_allocation_respects_the_budget_and_fills_it(setup):
    _, _, space, macs, scores = setup
    base = macs.predict_widths({})
    previous = None
    for fraction in (0.8, 0.5, 0.3):
        a = allocate(space, scores, macs, fraction * base)
        assert a.feasible and a.predicted_ms <= fraction * base
        assert a.predicted_ms == pytest.approx(macs.predict_plan(a.plan))
        # greedy to the end: no single step wider still fits the budget
        assert all(macs.predict_plan(p) > fraction * base for p in _steps_up(space, a.plan))
        if previous is not None:
            assert a.importance_kept <= previous.importance_kept and a.predicted_ms <= previous.predicted_ms
        previous = a
        encoded = space.encode(a.plan)   # in the space's encoding: enqueued as is
        assert all(encoded[d.param] == a.plan.ratio(d.groups[0]) for d in space.dimensions)


def test_allocation_keeps_more_importance_than_a_uniform_plan_of_the_same_latency(setup):
    _, _, space, macs, scores = setup
    for ratio in (0.25, 0.5):
        uniform = space.uniform(ratio)
        a = allocate(space, scores, macs, macs.predict_plan(uniform))
        kept_uniform = allocate(space, scores, macs, macs.predict_plan(uniform))  # deterministic
        assert a == kept_uniform
        ranked = {g: s.double().sort(descending=True).values / s.double().mean() for g, s in scores.items()}
        widths = macs.group_widths(uniform)
        uniform_kept = sum(float(ranked[g][:w].sum()) for g, w in widths.items()) / sum(
            float(r.sum()) for r in ranked.values())
        assert a.importance_kept >= uniform_kept


def test_allocation_prunes_the_group_whose_importance_is_concentrated():
    """Two groups of equal latency cost: one whose importance sits in a few channels (cheap to prune), one with
    every channel alike. The budget is spent on the flat one."""
    layers = [LayerSpec("a", "linear", 64, 64, (1, 64), None, "a"), LayerSpec("b", "linear", 64, 64, (1, 64), None, "b")]
    table = LatencyTable("t", "d", 8, {"a": 64, "b": 64}, layers,
                         {"a": {(64, 64): 1.0}, "b": {(64, 64): 1.0}})   # off the grid: scaled by MACs
    space = build_space({"ratio": {"low": 0.0, "high": 0.875, "step": 0.125}}, ["a", "b"])
    scores = {"a": torch.cat([torch.full((8,), 100.0), torch.full((56,), 0.1)]), "b": torch.ones(64)}
    a = allocate(space, scores, table, 1.0)   # half the baseline's 2 ms
    assert a.predicted_ms <= 1.0 and a.plan.ratio("a") > a.plan.ratio("b")
    assert a.plan.ratio("a") == 0.875 and a.plan.ratio("b") == 0.125
    swapped = allocate(space, {"a": scores["b"], "b": scores["a"]}, table, 1.0)
    assert swapped.plan.ratio("b") == 0.875 and swapped.plan.ratio("a") == 0.125


def test_a_budget_below_the_narrowest_plan_is_reported_not_met(setup):
    _, _, space, macs, scores = setup
    a = allocate(space, scores, macs, 1e-9)
    assert not a.feasible and a.plan == space.upper() and "over budget" in a.summary()
    with pytest.raises(ConfigError, match="> 0"):
        allocate(space, scores, macs, 0.0)
    with pytest.raises(ConfigError, match="another model"):
        allocate(space, {}, macs, 1.0)
    assert [x.budget_ms for x in allocate_fractions(space, scores, macs, [0.5])] == [0.5 * macs.predict_widths({})]


def test_budgets_are_checked_before_anything_runs(make_cfg, tmp_path):
    assert AppConfig.of(make_cfg("search.allocate.budgets=[0.5,1]")).search.allocate.budgets == [0.5, 1.0]
    with pytest.raises(ConfigError, match=r"search.allocate.budgets budget 2 is outside \(0, 1\]"):
        AppConfig.of(make_cfg("search.allocate.budgets=[2]"))   # the typed config checks them at the CLI edge
    with pytest.raises(ConfigError, match="run calibrate again"):
        check_search(AppConfig.of(make_cfg("search.allocate.budgets=[0.5]",
                                           f"search.allocate.table={tmp_path / 'none.json'}")))


def test_warm_start_plans_are_the_allocations_at_the_budgets(setup):
    model, pruner, space, macs, scores = setup
    from autoprune.hw.profile import HardwareProfile

    plans = warm_start_plans(space, model, pruner, HardwareProfile("p", round_to=8), [0.6, 0.3])
    assert plans == [a.plan for a in allocate_fractions(space, scores, macs, [0.6, 0.3])]
    assert plans[0] != plans[1] and warm_start_plans(space, model, pruner, HardwareProfile("p"), []) == []


@pytest.mark.slow   # a whole (empty) search: baseline, report
def test_warm_start_enqueues_the_allocations(make_cfg, tmp_path):
    cfg = make_cfg("search.allocate.budgets=[0.6,0.3]", "search.warm_start=[]", "search.n_trials=0",
                   "search.study_name=alloc")
    search = Search(cfg, tmp_path / "out")
    search.run()
    ctx = search.ctx
    expected = warm_start_plans(ctx.space, ctx.evaluator.start_model(), ctx.evaluator.pruner, ctx.profile, [0.6, 0.3])
    waiting = [t for t in search.study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [ctx.space.encode(p) for p in expected]
    assert expected[0] != expected[1]


# ------------------------------------------------------------------------------------------ as a searcher
def _kept(scores, widths) -> float:
    """Share of the summed normalised importance that these group widths keep (the allocation's measure)."""
    ranked = {g: s.double().sort(descending=True).values / s.double().mean() for g, s in scores.items()}
    return sum(float(ranked[g][:w].sum()) for g, w in widths.items()) / sum(float(r.sum()) for r in ranked.values())


def _allocation_searcher(space, inputs, study=None):
    study = study or optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler("allocate", 0))
    return AllocationSearcher.build(study, space, SearcherSettings(allocation=inputs)), study


def test_the_allocation_searcher_proposes_budgeted_plans_that_beat_uniform_ones(setup):
    """On the real ResNet: every proposal is the allocation at its recorded budget, within it, distinct from
    the others, and keeps at least the importance of the widest uniform plan within the same budget (more, for
    some); the sequence is deterministic and spread over the range (the first budget is the midpoint)."""
    model, pruner, space, macs, scores = setup
    inputs = AllocationInputs(scores, macs, "MACs")
    searcher, study = _allocation_searcher(space, inputs)
    base, low = macs.predict_widths({}), inputs.narrowest_fraction(space)
    uniforms = [space.uniform(r) for r in _grid(space.dimensions[0])]
    plans, fractions, better = [], [], 0
    for _ in range(6):
        trial = searcher.ask()
        plan, record = space.suggest(trial), trial.user_attrs["allocation"]
        budget = record["budget_fraction"] * base
        assert macs.predict_plan(plan) == pytest.approx(record["predicted"]) and record["predicted"] <= budget
        fitting = [u for u in uniforms if macs.predict_plan(u) <= budget]
        widest = min(fitting, key=lambda u: u.ratio(next(iter(u.groups))))
        kept, kept_uniform = _kept(scores, macs.group_widths(plan)), _kept(scores, macs.group_widths(widest))
        assert kept == pytest.approx(record["importance_kept"]) and kept >= kept_uniform - 1e-9
        better += kept > kept_uniform + 1e-9
        plans.append(plan)
        fractions.append(record["budget_fraction"])
        study.tell(trial, [0.9, record["predicted"]])
    assert len(set(p.to_json() for p in plans)) == len(plans)
    assert better >= 1
    assert fractions[0] == pytest.approx(low + (1 - low) / 2, abs=1e-6)
    assert all(low < f < 1 for f in fractions)
    again, other = _allocation_searcher(space, inputs)
    assert [space.suggest(again.ask()).to_json() for _ in range(3)] == [p.to_json() for p in plans[:3]]


def test_the_allocation_searcher_asks_waiting_trials_first_resumes_and_falls_back_to_tpe():
    """A warm start waiting in the study is asked first; a new searcher on the study skips the plans it holds;
    when every budget's plan is in the study, the study's TPE proposes (no `allocation` attr)."""
    layers = [LayerSpec("a", "linear", 64, 64, (1, 64), None, "a"), LayerSpec("b", "linear", 64, 64, (1, 64), "a", "b")]
    macs = MacsModel({"a": 64, "b": 64}, layers, 8)
    space = build_space({"ratio": {"low": 0.0, "high": 0.5, "step": 0.25}}, ["a", "b"])   # 9 plans in all
    torch.manual_seed(0)
    inputs = AllocationInputs({"a": torch.rand(64), "b": torch.rand(64)}, macs, "MACs")
    searcher, study = _allocation_searcher(space, inputs)
    study.enqueue_trial(space.encode(space.uniform(0.25)))
    first = searcher.ask()
    assert "allocation" not in first.user_attrs and space.suggest(first) == space.uniform(0.25)
    study.tell(first, [0.9, 1.0])
    seen = []
    for _ in range(12):
        searcher = _allocation_searcher(space, inputs, study)[0]   # a new searcher each time: resumes
        trial = searcher.ask()
        seen.append((space.suggest(trial).to_json(), "allocation" in trial.user_attrs))
        study.tell(trial, [0.9, 1.0])
    allocated = [plan for plan, by_allocation in seen if by_allocation]
    assert len(set(allocated)) == len(allocated) >= 2 and space.uniform(0.25).to_json() not in allocated
    assert not seen[-1][1]   # exhausted: TPE
    assert [by for _, by in seen] == sorted((by for _, by in seen), reverse=True)   # allocations, then TPE only


@pytest.mark.slow   # a 2-trial search
def test_a_search_with_the_allocation_searcher_runs_its_allocations(make_cfg, tmp_path):
    cfg = make_cfg("search.sampler=allocate", "search.warm_start=[]", "search.n_trials=2", "search.study_name=alloc",
                   "search.heartbeat_s=0")
    search = Search(cfg, tmp_path / "out")
    search.run()
    trials = search.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    ctx = search.ctx
    inputs = allocation_inputs(ctx.space, ctx.evaluator.start_model(), ctx.evaluator.pruner, ctx.profile)
    for t in trials:
        record = t.user_attrs["allocation"]
        expected = inputs.allocate(ctx.space, record["budget_fraction"])
        assert t.params == ctx.space.encode(expected.plan) and record["predicted"] <= record["budget"]
    assert trials[0].user_attrs["allocation"]["budget_fraction"] > trials[1].user_attrs["allocation"]["budget_fraction"]
