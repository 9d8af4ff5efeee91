"""Multi-fidelity search (autoprune.search.fidelity): rung-0 screening and promotion in the search loop,
on the default task's small ResNet and digits data, a real Optuna study (SQLite) and, in the slow part, a
whole search with MLflow, its report, `pick`'s choice and a resume."""

from __future__ import annotations

import dataclasses
import logging

import optuna
import pytest
import torch_pruning as tp
from mlflow.tracking import MlflowClient

from autoprune.config import AppConfig
from autoprune.context import build_context
from autoprune.errors import ConfigError
from autoprune.recover import evaluate
from autoprune.rung0 import Rung0Config, Rung0Scorer
from autoprune.search.checks import check_search
from autoprune.search.fidelity import FULL, RUNG0_ATTR, RUNG_ATTR, PromotionRule, Rung0Step
from autoprune.search.loop import CANDIDATE, COMPLETE, BaseObserver, Budget, SearchLoop
from autoprune.search.objectives import Objectives
from autoprune.search.observers import ProgressObserver
from autoprune.search.pareto import front_hypervolume
from autoprune.search.searchers import OptunaSearcher, make_sampler

State = optuna.trial.TrialState
OBJECTIVES = ["val_accuracy", "params"]   # both deterministic at rung 0 (no timing noise)


def non_dominated_with_margin(mine: dict, others: list[dict], objectives: list[str], margin: float) -> bool:
    """The oracle, written apart from the rule: `mine` (val accuracy + margin) is not dominated by any of `others`."""
    def better_or_equal(a: dict, b: dict, name: str, bonus: float) -> bool:
        return a[name] >= b[name] + bonus if name == "val_accuracy" else a[name] <= b[name]

    for other in others:
        no_worse = all(better_or_equal(other, mine, n, margin) for n in objectives)
        strictly = any((other[n] > mine[n] + margin) if n == "val_accuracy" else (other[n] < mine[n])
                       for n in objectives)
        if no_worse and strictly:
            return False
    return True


# ------------------------------------------------------------------------------------ the rule
def test_the_rule_promotes_the_rung0_front_and_what_trails_it_by_less_than_the_margin():
    rule = PromotionRule(Objectives(("val_accuracy", "params")), margin=0.02, warmup=0)
    seen = [(0, {"val_accuracy": 0.80, "params": 100}), (1, {"val_accuracy": 0.60, "params": 50})]
    assert rule.decide({"val_accuracy": 0.70, "params": 80}, seen).promoted          # between them: on the front
    assert rule.decide({"val_accuracy": 0.79, "params": 120}, seen).promoted         # 1 pt behind #0: within margin
    trailing = rule.decide({"val_accuracy": 0.77, "params": 120}, seen)               # 3 pt behind #0, larger
    assert not trailing.promoted and "#0" in trailing.reason
    assert not PromotionRule(rule.objectives).decide({"val_accuracy": 0.79, "params": 120}, seen).promoted
    assert PromotionRule(rule.objectives).decide({"val_accuracy": 0.80, "params": 100}, seen).promoted  # a tie


def test_warmup_promote_all_and_constraints_that_recovery_cannot_change():
    objectives = Objectives.from_config(["val_accuracy", "params"], {"max_params": 90, "min_accuracy": 0.99})
    seen = [(0, {"val_accuracy": 0.9, "params": 10})]
    worse = {"val_accuracy": 0.5, "params": 50}
    assert PromotionRule(objectives, warmup=2).decide(worse, seen).reason == "warm-up (2 of 2)"
    assert not PromotionRule(objectives, warmup=1).decide(worse, seen).promoted
    assert PromotionRule(objectives, promote="all").decide(worse, seen).promoted
    # max_params holds for the final model already; min_accuracy is for recovery to reach, not rung 0
    too_big = PromotionRule(objectives, warmup=5).decide({"val_accuracy": 0.95, "params": 100}, seen)
    assert not too_big.promoted and "max_params" in too_big.reason
    assert PromotionRule(objectives, warmup=5).decide({"val_accuracy": 0.1, "params": 20}, seen).promoted


def test_bad_fidelity_settings_fail_in_one_line(make_cfg):
    with pytest.raises(ConfigError, match=r"must end with full .*use \[rung0,full\]"):
        AppConfig.of(make_cfg("search.fidelity.rungs=[full,rung0]"))
    with pytest.raises(ConfigError, match="search.fidelity.rungs"):
        AppConfig.of(make_cfg("search.fidelity.rungs=[rung1,full]"))
    with pytest.raises(ConfigError, match="search.fidelity.margin"):
        AppConfig.of(make_cfg("search.fidelity.margin=2"))
    with pytest.raises(ConfigError, match="cannot rank on onnx_bytes .* search.fidelity.rungs=\\[full\\]"):
        check_search(AppConfig.of(make_cfg("search.fidelity.rungs=[rung0,full]",
                                           "search.objectives=[val_accuracy,onnx_bytes]")))
    assert not AppConfig.of(make_cfg()).search.fidelity.multi   # the default: today's single fidelity


# ------------------------------------------------------------------------- the loop, real model
class Recorder(BaseObserver):
    def __init__(self):
        self.rungs, self.ends = [], []

    def on_rung_end(self, study, trial, rung):
        self.rungs.append((trial.number, rung.promoted))

    def on_trial_end(self, study, trial, outcome):
        self.ends.append(outcome)


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """Two enqueued plans on the real small ResNet: #0 uniform 0.25 (warm-up), #1 the same widths chosen by
    random importance (same params; at rung 0 less accurate than #0, so dominated by it). The slow search
    test below covers candidates promoted after the warm-up."""
    from tests.conftest import compose_config

    tmp = tmp_path_factory.mktemp("screened")
    ctx = build_context(compose_config(tmp, "prune.importance=[l2,random]", "task.train.epochs=1"))
    ev, space = ctx.evaluator, ctx.space
    plans = [space.uniform(0.25), dataclasses.replace(space.uniform(0.25), importance="random")]
    objectives = Objectives(tuple(OBJECTIVES))
    url = f"sqlite:///{tmp / 'optuna.db'}"
    study = optuna.create_study(storage=url, directions=objectives.directions, sampler=make_sampler("random", 0))
    for plan in plans:
        study.enqueue_trial(space.encode(plan))
    _, params = tp.utils.count_ops_and_params(ctx.baseline, ev.example_input)
    baseline = {"val_accuracy": evaluate(ctx.baseline, ctx.task.data.val), "params": params, "latency_ms": 1.0}
    recorder = Recorder()
    rule = PromotionRule(objectives, margin=0.0, warmup=1)
    loop = SearchLoop(study, OptunaSearcher(study), space, ev, objectives, baseline, Budget(len(plans), url), tmp,
                      [recorder, ProgressObserver(baseline, Budget(len(plans), url))],
                      rung0=Rung0Step(Rung0Scorer(ev, Rung0Config(measure=False)), rule), max_drop=0.5)
    return loop, study, recorder, baseline


@pytest.mark.slow   # a baseline trained and a candidate recovered: about 20 s on 2 idle cores
def test_only_candidates_on_the_rung0_front_are_fully_recovered(screened, caplog):
    loop, study, recorder, _ = screened
    with caplog.at_level(logging.INFO, logger="autoprune"):
        loop.run()
    trials = study.trials
    scores = [t.user_attrs[RUNG0_ATTR] for t in trials]
    # the oracle, from the recorded rung-0 scores in trial order (the first is the warm-up)
    expected = [True, non_dominated_with_margin(scores[1], scores[:1], OBJECTIVES, 0.0)]
    assert expected == [True, False]   # the setup is what the fixture says
    assert [promoted for _, promoted in recorder.rungs] == expected
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED]
    assert [t.user_attrs[RUNG_ATTR] for t in trials] == [FULL, 0]
    assert [o.state for o in recorder.ends] == [COMPLETE, CANDIDATE]
    assert "dominated at rung 0 by #0" in recorder.ends[1].reason
    # a candidate that was not promoted has its rung-0 scores only: no objective values, metrics, constraints
    candidate = trials[1]
    assert candidate.values is None and "val_accuracy" not in candidate.user_attrs and not candidate.constraints
    # the full-fidelity trial carries the recovered model's metrics as its values (not rung 0's)
    full = trials[0]
    assert full.values == [full.user_attrs["val_accuracy"], full.user_attrs["params"]]
    assert full.user_attrs["params"] == full.user_attrs[RUNG0_ATTR]["params"]   # the same widths at both rungs
    assert [t.number for t in study.best_trials] == [0]
    # the front's hypervolume, computed once per trial by the loop, and the counts of the progress line
    assert [(o.completed, o.candidates) for o in recorder.ends] == [(1, 1), (1, 2)]
    assert recorder.ends[-1].hypervolume == front_hypervolume(study, loop.objectives, loop.baseline, 0.5)[0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    assert lines[0].startswith("trial 1/2 (#0)") and "full 1 of 1 candidates" in lines[0]
    assert "not promoted: dominated at rung 0 by #0 | full 1 of 2 candidates | front 1" in lines[1]


# ---------------------------------------------------------------- a whole search (MLflow, report)
def _runs(client, exp_id, role):
    return client.search_runs([exp_id], filter_string=f"tags.`autoprune.role` = '{role}'", max_results=1000)


@pytest.mark.slow
def test_a_multi_fidelity_search_records_every_rung_and_reports_full_fidelity_only(tmp_path, caplog):
    """A search of 6 candidates, then resumed to 8: rung-0 candidate runs and full-fidelity trial runs in
    MLflow, the report, the front and `pick` over full-fidelity trials only."""
    from autoprune.cli import run
    from autoprune.pick import PickRule, choose
    from tests.conftest import compose_config

    common = ["search.sampler=random", "search.warm_start=[0.25,0.5]", "search.objectives=[val_accuracy,params]",
              "search.fidelity.rungs=[rung0,full]", "search.fidelity.warmup=2", "search.fidelity.margin=0",
              "tracking.experiment=fidelity"]
    first = run(compose_config(tmp_path, "search.n_trials=6", *common), tmp_path / "out1")
    with caplog.at_level(logging.WARNING, logger="autoprune"):
        second = run(compose_config(tmp_path, "search.n_trials=8", *common), tmp_path / "out2")
    assert "MLflow reconciled" not in caplog.text   # the rung attrs are not mistaken for missing metrics
    study = optuna.load_study(study_name=second.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.trials
    assert len(trials) == 8 and all(RUNG0_ATTR in t.user_attrs for t in trials)
    full = {t.number for t in trials if t.state == State.COMPLETE}
    screened = {t.number for t in trials if t.state == State.PRUNED}
    assert full | screened == set(range(8)) and screened, "the setup must screen some candidate out"
    # promotion: each decision as the oracle makes it from the rung-0 scores of the trials before it
    for t in trials:
        before = [o.user_attrs[RUNG0_ATTR] for o in trials if o.number < t.number]
        expected = len(before) < 2 or non_dominated_with_margin(t.user_attrs[RUNG0_ATTR], before, OBJECTIVES, 0.0)
        assert (t.number in full) == expected, t.number
    assert not any("warm-up" in trials[n].user_attrs[RUNG0_ATTR]["reason"] for n in (6, 7))   # resumed, no warm-up
    # MLflow: one candidate run per candidate (rung 0), trial runs for full-fidelity trials only
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fidelity").experiment_id
    candidates = {int(r.data.tags["autoprune.trial_number"]): r for r in _runs(client, exp, "candidate")}
    assert set(candidates) == set(range(8))
    for n, run_ in candidates.items():
        tags, metrics = run_.data.tags, run_.data.metrics
        assert tags["autoprune.rung"] == "0" and tags["autoprune.promoted"] == str(n in full).lower()
        assert metrics["val_accuracy"] == trials[n].user_attrs[RUNG0_ATTR]["val_accuracy"]
        assert "test_accuracy" not in metrics and run_.info.status == "FINISHED"
    trial_runs = _runs(client, exp, "trial")
    assert {int(r.data.tags["autoprune.trial_number"]) for r in trial_runs} == full
    for r in trial_runs:
        assert r.data.metrics["val_accuracy"] == trials[int(r.data.tags["autoprune.trial_number"])].values[0]
    tested = {int(r.data.tags["autoprune.trial_number"]) for r in trial_runs if "test_accuracy" in r.data.metrics}
    assert {t.number for t in study.best_trials} <= tested <= full   # earlier fronts were tested too
    # the report, and what pick chooses from: full-fidelity trials only
    for outcome in (first, second):
        assert {c.trial for c in outcome.report.front} <= full
    report = second.report
    assert {c.trial for c in report.trials} == full and report.n_candidates == len(screened)
    assert {c.trial for c in report.front} == {t.number for t in study.best_trials}
    chosen, _ = choose(report.trials, PickRule(None, None, None))
    assert chosen.trial in full
    parent = client.get_run(second.parent_run_id).data.metrics
    assert parent["candidates"] == 8 and parent["completed_trials"] == len(full)


def test_no_trial_starts_after_the_search_timeout(tmp_path, caplog):
    """search.timeout_s: the running trial finishes, no new one starts (clock injected, advanced by trials)."""
    from tests.test_loop import make_loop

    now = [0.0]

    class TenSeconds(BaseObserver):
        def on_trial_end(self, study, trial, outcome):
            now[0] += 10.0

    loop, study = make_loop(tmp_path, [0.9] * 5, n_trials=5, observers=[TenSeconds()], clock=lambda: now[0])
    loop.timeout_s = 25.0
    with caplog.at_level(logging.INFO, logger="autoprune"):
        loop.run()
    assert len(study.trials) == 3 and "search.timeout_s=25 reached after 3 trial(s)" in caplog.text
