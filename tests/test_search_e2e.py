"""End-to-end searches with real Optuna (SQLite), real MLflow (sqlite store) and real ONNX Runtime."""

from __future__ import annotations

import csv

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from autoprune.cli import run
from autoprune.context import build_context
from autoprune.errors import ExportError, MeasurementError, PruningError
from autoprune.search.retime import front_numbers, retimed_latencies


def _runs(client, exp_id, role):
    return client.search_runs([exp_id], filter_string=f"tags.`autoprune.role` = '{role}'", max_results=1000)


@pytest.fixture(scope="module")
def two_invocations(tmp_path_factory):
    """One search of 3 trials, then again with the budget raised to 5: two more."""
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("search")
    cfg = compose_config(tmp, "search.n_trials=3", "tracking.experiment=e2e")
    first = run(cfg, tmp / "out1")
    cfg2 = compose_config(tmp, "search.n_trials=5", "tracking.experiment=e2e")
    second = run(cfg2, tmp / "out2")
    return tmp, first, second


def test_mlflow_layout(two_invocations):
    tmp, first, second = two_invocations
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    parents = _runs(client, exp.experiment_id, "search")
    assert {p.info.run_id for p in parents} == {first.parent_run_id, second.parent_run_id}
    assert all(p.info.status == "FINISHED" for p in parents)
    baselines = _runs(client, exp.experiment_id, "baseline")
    assert len(baselines) == 2
    assert {b.data.tags["mlflow.parentRunId"] for b in baselines} == {first.parent_run_id, second.parent_run_id}
    trials = _runs(client, exp.experiment_id, "trial")
    assert sorted(int(t.data.tags["autoprune.trial_number"]) for t in trials) == [0, 1, 2, 3, 4]
    groups = {"stem.0", "layers.0.0.conv1", "layers.1.0.conv1", "layers.1.0.conv2", "layers.2.0.conv1",
              "layers.2.0.conv2"}
    for t in trials:
        assert t.data.tags["autoprune.state"] == "complete"
        assert {k for k in t.data.params if k.startswith("ratio.")} == {f"ratio.{g}" for g in groups}
        assert {"val_accuracy", "latency_ms", "latency_p90_ms", "latency_cv", "macs", "params",
                "onnx_bytes"} <= set(t.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(t.info.run_id)}
        assert {"plan.json", "model.onnx", "model.pt", "latency.json"} <= artifacts
    first_numbers = {int(t.data.tags["autoprune.trial_number"]) for t in trials
                     if t.data.tags["mlflow.parentRunId"] == first.parent_run_id}
    assert first_numbers == {0, 1, 2}
    report = {a.path for a in client.list_artifacts(second.parent_run_id, "report")}
    assert {"report/pareto.csv", "report/pareto.png", "report/report.html"} <= report


def non_dominated(points, directions):
    """Indices of the points no other point dominates: an oracle independent of Optuna's."""
    signs = [-1 if d == "maximize" else 1 for d in directions]
    cost = [[s * v for s, v in zip(signs, p)] for p in points]
    return [i for i, a in enumerate(cost)
            if not any(all(x <= y for x, y in zip(b, a)) and b != a for b in cost)]


def test_pareto_tags_are_exactly_the_non_dominated_set(two_invocations):
    tmp, _, second = two_invocations
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    trials = _runs(client, client.get_experiment_by_name("e2e").experiment_id, "trial")
    # the end of the search re-timed the models near the front (search.retime): the front follows those latencies
    points = [(t.data.metrics["val_accuracy"], t.data.metrics.get("latency_retimed_ms", t.data.metrics["latency_ms"]))
              for t in trials]
    expected = {int(trials[i].data.tags["autoprune.trial_number"]) for i in non_dominated(points, ["maximize", "minimize"])}
    tagged = {int(t.data.tags["autoprune.trial_number"]) for t in trials if t.data.tags["autoprune.pareto"] == "true"}
    assert tagged == expected == {c.trial for c in second.report.front}
    for t in trials:  # every Pareto model has its test accuracy (models that left the front keep theirs)
        if int(t.data.tags["autoprune.trial_number"]) in expected:
            assert 0.0 <= t.data.metrics["test_accuracy"] <= 1.0
    rows = list(csv.DictReader((second.report_files[0]).open()))
    assert [int(r["trial"]) for r in rows] == [-1, *[c.trial for c in second.report.front]]


def test_the_end_of_the_search_re_timed_the_front_side_by_side(two_invocations):
    tmp, first, second = two_invocations
    study = optuna.load_study(study_name=first.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    retimed = retimed_latencies(study)   # the second invocation's, whole: trials 0-2 came from MLflow
    assert "baseline" in retimed and {str(c.trial) for c in second.report.front} <= set(retimed)
    assert second.report.retime["rounds"] == 3 and second.report.retime["models"] == len(retimed)
    assert {c.trial for c in second.report.front} == front_numbers(study)
    for c in second.report.front:
        assert c.latency_ms == pytest.approx(retimed[str(c.trial)])
    assert second.report.baseline.latency_ms == pytest.approx(retimed["baseline"])
    rows = (tmp / "out2" / "report" / "retime.csv").read_text().splitlines()
    assert len(rows) == 1 + len(retimed)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    parent = client.get_run(second.parent_run_id)
    assert parent.data.metrics["retime_drift"] > 0 and "retime_flagged" in parent.data.metrics


def test_second_invocation_resumes_the_study(two_invocations):
    tmp, first, second = two_invocations
    assert first.study_name == second.study_name
    study = optuna.load_study(study_name=first.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert len(study.trials) == 5 and len(first.report.trials) == 3 and len(second.report.trials) == 5
    # the first trial of a new study is the enqueued uniform warm-start point
    assert set(study.trials[0].params.values()) == {0.5}
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    sources = [r.data.tags["autoprune.source"] for r in
               _runs(client, client.get_experiment_by_name("e2e").experiment_id, "baseline")]
    assert sorted(s.split()[0] for s in sources) == ["cache", "trained,"]


def _fail_nth_call(monkeypatch, owner, name: str, n: int, exc: Exception) -> None:
    """Make the n-th call (1-based) of owner.name raise exc; every other call runs the real thing."""
    original, calls = getattr(owner, name), []

    def faulty(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, faulty)


# Faults injected into the second trial, at each stage of a candidate's evaluation (the real
# stage runs on every other call). Calls per trial: apply 1, export 2 (measured graph, final
# model), measure 1, after the baseline's own measurement.
FAULTS = {
    "pruning": ("autoprune.prune.engine:PruningEngine.apply", 2, PruningError("group layers.1 cannot be pruned")),
    "export": ("autoprune.candidate:export_model", 3, ExportError("torch.onnx failed")),
    "runtime crash": ("autoprune.hw.backend:Measurer.measure", 3, MeasurementError("onnxruntime crashed")),
    "anything else": ("autoprune.candidate:CandidateEvaluator.evaluate", 2, RuntimeError("out of memory")),
}


@pytest.mark.parametrize("stage", [pytest.param(k, marks=[] if k == "pruning" else [pytest.mark.slow]) for k in FAULTS])
def test_a_fault_at_any_stage_fails_that_trial_with_its_reason_and_the_search_goes_on(make_cfg, tmp_path,
                                                                                     monkeypatch, stage):
    import importlib

    target, n, exc = FAULTS[stage]
    reason = f"{type(exc).__name__}: {exc}"
    module_name, attr = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    _fail_nth_call(monkeypatch, owner, name, n, exc)
    outcome = run(make_cfg("search.n_trials=3"), tmp_path / "out")
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                               optuna.trial.TrialState.COMPLETE]
    failed = study.trials[1]
    assert failed.user_attrs["fail_reason"] == reason
    run_ = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(failed.user_attrs["mlflow_run_id"])
    assert run_.info.status == "FAILED" and run_.data.tags["autoprune.state"] == "failed"
    assert run_.data.tags["autoprune.fail_reason"] == reason
    assert len(outcome.report.trials) == 2


@pytest.mark.slow   # a whole search each
def test_diverging_fine_tune_fails_its_trial_with_the_reason(make_cfg, tmp_path, monkeypatch):
    """Fault: one candidate's fine-tuning really diverges (learning rate 1e30 -> inf/NaN loss). That trial
    fails with the reason in Optuna and MLflow; the others complete; counts stay right."""
    import dataclasses

    from autoprune.candidate import CandidateEvaluator

    original, calls = CandidateEvaluator.evaluate, []

    def diverge_second(self, plan, workdir, monitor=None):
        calls.append(plan)
        if len(calls) != 2:
            return original(self, plan, workdir, monitor)
        saved = self.recover
        self.recover = dataclasses.replace(saved, train=dataclasses.replace(saved.train, lr=1e30))
        try:
            return original(self, plan, workdir, monitor)
        finally:
            self.recover = saved

    monkeypatch.setattr(CandidateEvaluator, "evaluate", diverge_second)
    outcome = run(make_cfg("search.n_trials=3"), tmp_path / "out")
    trials = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                         optuna.trial.TrialState.COMPLETE]
    reason = trials[1].user_attrs["fail_reason"]
    assert reason.startswith("DivergedError: training loss became") and "lower the learning rate" in reason
    run_ = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(trials[1].user_attrs["mlflow_run_id"])
    assert run_.info.status == "FAILED" and run_.data.tags["autoprune.fail_reason"] == reason
    assert len(outcome.report.trials) == 2


def test_own_model_data_and_checkpoint(make_cfg, tmp_path):
    from factories import tiny_cnn

    torch.manual_seed(1)
    ckpt = tmp_path / "weights.pt"
    torch.save(tiny_cnn().state_dict(), ckpt)
    outcome = run(make_cfg("search.n_trials=1", "task.name=blobs", "~task.model", "~task.data",
                           "+task.model._target_=factories.tiny_cnn", "+task.data._target_=factories.blobs",
                           f"task.checkpoint={ckpt}"), tmp_path / "out")
    assert len(outcome.report.trials) == 1 and outcome.study_name.startswith("blobs-")
    assert outcome.report.baseline.params == sum(p.numel() for p in tiny_cnn().parameters())


@pytest.mark.slow   # a whole search each
@pytest.mark.parametrize("overrides", [
    ["search.backend=nni", "search.nni.tuner=evolution"],
    ["search.sampler=uniform", "search.warm_start=[]"],
    ["search.objectives=[val_accuracy,macs]", "search.constraints.max_params=3000"],
    ["search.constraints.max_accuracy_drop=0.0"],
])
def test_backends_objectives_and_constraints_end_to_end(make_cfg, tmp_path, overrides):
    outcome = run(make_cfg("search.n_trials=3", *overrides), tmp_path / "out")
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 3
    if "search.sampler=uniform" in overrides:
        for t in study.trials:  # one ratio everywhere, capped where a group cannot take it (its range's high)
            ratio = max(t.params.values())
            assert all(v == min(ratio, t.distributions[k].high) for k, v in t.params.items()), t.params
    if "search.constraints.max_params=3000" in overrides:
        assert [d.name.lower() for d in study.directions] == ["maximize", "minimize"]
        assert all(t.values[1] == t.user_attrs["macs"] for t in study.trials)
        assert {c.trial for c in outcome.report.front} <= {c.trial for c in outcome.report.trials if c.feasible}
        assert all(c.feasible == (c.params <= 3000) for c in outcome.report.trials)
    if "search.constraints.max_accuracy_drop=0.0" in overrides:  # relative to the baseline this search scored
        base = outcome.report.baseline.val_accuracy
        assert all(t.constraints["max_accuracy_drop"] == pytest.approx(base - t.values[0]) for t in study.trials)
        assert all(c.feasible == (c.val_accuracy >= base) for c in outcome.report.trials)
        # a search that leaves the bound unset keeps the study name it had before the bound existed
        unset, absent = make_cfg(), make_cfg()
        with open_dict(absent):
            del absent.search.constraints["max_accuracy_drop"]
        assert build_context(unset).study_name == build_context(absent).study_name != outcome.study_name


@pytest.mark.slow   # a whole search each
def test_early_stop_prunes_a_candidate_trailing_a_faster_one(make_cfg, tmp_path):
    # trial 0 prunes 85 % everywhere (fast); trial 1 prunes nothing (slower: wide layers, so that the
    # order holds however noisy the machine); a margin of -1 makes "trails by more than -1" true
    # whatever the accuracies -> trial 1 stops after its first epoch.
    outcome = run(make_cfg("task.model.widths=[32,64,128]", "search.n_trials=2", "search.warm_start=[0.85,0.0]",
                           "recover.epochs=2",
                           "search.early_stop.enabled=true", "search.early_stop.margin=-1.0"), tmp_path / "out")
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.COMPLETE and len(first.user_attrs["val_curve"]) == 2
    assert second.state == optuna.trial.TrialState.PRUNED
    assert len(second.user_attrs["val_curve"]) == 1 and "trails trial #0" in second.user_attrs["stop_reason"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ = client.get_run(second.user_attrs["mlflow_run_id"])
    assert run_.data.tags["autoprune.state"] == "pruned"


@pytest.mark.slow   # a whole search each
def test_trial_timeout_and_flaky_mlflow_do_not_stop_the_search(make_cfg, tmp_path, monkeypatch):
    """Faults: a trial past search.trial_timeout_s fails with its reason; MLflow failing twice in a row
    is retried; MLflow failing for good on one trial's artifacts leaves the trial complete in Optuna."""
    import signal
    import time as _time

    from autoprune.candidate import CandidateEvaluator
    from autoprune.track import mlflow_tracker

    monkeypatch.setattr(mlflow_tracker, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    original_eval, original_log_batch, original_artifact = (
        CandidateEvaluator.evaluate, mlflow_tracker.MlflowClient.log_batch, mlflow_tracker.MlflowClient.log_artifact)
    state = {"evals": 0, "batches": 0, "artifacts": 0}

    def slow_second(self, plan, workdir, monitor=None):
        state["evals"] += 1
        if state["evals"] == 2:  # hangs; its deadline is brought forward to now, so no trial races a clock
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            _time.sleep(3600)
        return original_eval(self, plan, workdir, monitor)

    def flaky_batch(self, *args, **kwargs):
        state["batches"] += 1
        if state["batches"] in (3, 4):  # two transient failures in a row
            raise ConnectionError("tracking server hiccup")
        return original_log_batch(self, *args, **kwargs)

    def broken_artifacts_of_third_trial(self, run_id, local_path, artifact_path=None):
        if "0002" in str(local_path):
            raise ConnectionError("artifact store down")
        return original_artifact(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(CandidateEvaluator, "evaluate", slow_second)
    monkeypatch.setattr(mlflow_tracker.MlflowClient, "log_batch", flaky_batch)
    monkeypatch.setattr(mlflow_tracker.MlflowClient, "log_artifact", broken_artifacts_of_third_trial)
    outcome = run(make_cfg("search.n_trials=3", "search.trial_timeout_s=600", "search.warm_start=[0.5,0.25,0.75]"),
                  tmp_path / "out")
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "trial_timeout_s=600" in study.trials[1].user_attrs["fail_reason"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(study.trials[1].user_attrs["mlflow_run_id"]).info.status == "FAILED"
    third = client.get_run(study.trials[2].user_attrs["mlflow_run_id"])
    assert third.info.status == "FINISHED" and "autoprune.logging_error" in third.data.tags  # closed, flagged ...
    assert "model.onnx" not in {a.path for a in client.list_artifacts(third.info.run_id)}
    assert study.trials[2].values is not None                                             # ... Optuna has it
    first = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])                    # retried: all there
    assert first.data.tags["autoprune.state"] == "complete" and "latency_ms" in first.data.metrics


def test_trial_runs_span_exactly_their_optuna_trials(two_invocations):
    """A trial run starts and ends when its Optuna trial did: not when the search ended (Pareto models
    are logged then) nor when `pick` logged its deploy model (a 2-s trial showed 40-50 s before)."""
    tmp, first, second = two_invocations
    study = optuna.load_study(study_name=first.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("e2e").experiment_id
    parents = {p.info.run_id: p.info for p in _runs(client, exp_id, "search")}
    runs = sorted(_runs(client, exp_id, "trial"), key=lambda r: int(r.data.tags["autoprune.trial_number"]))
    assert any(r.data.tags["autoprune.pareto"] == "true" for r in runs)   # their models were logged at the end
    for trial_run in runs:
        trial = study.trials[int(trial_run.data.tags["autoprune.trial_number"])]
        assert trial_run.info.start_time == int(trial.datetime_start.timestamp() * 1000)
        assert trial_run.info.end_time == int(trial.datetime_complete.timestamp() * 1000)
        parent = parents[trial_run.data.tags["mlflow.parentRunId"]]
        assert parent.start_time <= trial_run.info.start_time <= trial_run.info.end_time <= parent.end_time
    for earlier, later in zip(runs, runs[1:]):   # one worker: trial runs follow one another, never overlap
        assert earlier.info.end_time <= later.info.start_time


def test_the_resumed_study_names_its_objectives(two_invocations):
    """What optuna-dashboard shows as the objectives' names (it showed "0" / "1" without them)."""
    tmp, first, _ = two_invocations
    study = optuna.load_study(study_name=first.study_name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert study.metric_names == ["val_accuracy", "latency_ms"]
