"""report / pick / reproduce modes and the run-time selector, on one real search."""

from __future__ import annotations

import csv

import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient

from autoprune.cli import run
from autoprune.deploy import ParetoSelector
from autoprune.errors import AutopruneError


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("modes")
    outcome = run(compose_config(tmp, "search.n_trials=4", "search.warm_start=[0.25,0.5,0.75]"), tmp / "search")
    return tmp, outcome


def _cfg(tmp, *overrides):
    from conftest import compose_config

    return compose_config(tmp, *overrides)


def test_report_mode_rebuilds_the_same_front_from_storage_and_mlflow(searched):
    tmp, outcome = searched
    data, files = run(_cfg(tmp, "mode=report"), tmp / "report-again")
    assert [c.trial for c in data.front] == [c.trial for c in outcome.report.front]
    first = list(csv.reader(outcome.report_files[0].open()))
    again = list(csv.reader(files[0].open()))
    assert first == again
    import json

    sizes = json.loads((tmp / "report-again" / "report" / "pareto.json").read_text())["split_sizes"]
    assert sizes == json.loads(outcome.report_files[1].read_text())["split_sizes"] and sizes["val"] > 0   # recorded
    html = (tmp / "report-again" / "report" / "report.html").read_text()
    assert "<svg" in html and "sortBy" in html and "http" not in html.split("<body>")[1].replace("http://127", "")


def test_pick_chooses_by_the_documented_rule_and_registers_it(searched):
    tmp, outcome = searched
    trials = outcome.report.trials
    budget = sorted(c.latency_ms for c in trials)[len(trials) // 2]
    feasible = [c for c in trials if c.latency_ms <= budget]
    expected = max(feasible, key=lambda c: (c.val_accuracy, -c.latency_ms))
    export = tmp / "deploy" / "model.onnx"
    picked = run(_cfg(tmp, "mode=pick", f"pick.max_latency_ms={budget}", f"pick.export={export}",
                      "pick.model_name=digits-small"), tmp / "pick")
    assert picked.chosen.trial == expected.trial and picked.n_feasible == len(feasible)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    version = client.get_model_version_by_alias("digits-small", "deploy")
    assert str(version.version) == picked.version and version.tags["autoprune.trial_number"] == str(expected.trial)
    session = ort.InferenceSession(str(export), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 16, 16), np.float32)})[0]
    assert out.shape == (1, 10)


def test_pick_without_feasible_model_lists_the_nearest(searched):
    tmp, _ = searched
    with pytest.raises(AutopruneError, match=r"no model meets pick.max_latency_ms=1e-06; nearest: #\d+"):
        run(_cfg(tmp, "mode=pick", "pick.max_latency_ms=0.000001"), tmp / "pick2")


def test_reproduce_gives_the_same_architecture_and_accuracy(searched):
    tmp, outcome = searched
    trial = outcome.report.front[0].trial
    again = run(_cfg(tmp, "mode=reproduce", f"reproduce.trial={trial}"), tmp / "repro")
    assert again.same_architecture
    assert abs(again.now["val_accuracy"] - again.logged["val_accuracy"]) <= 0.001
    assert again.now["params"] == again.logged["params"] and again.now["macs"] == again.logged["macs"]


def test_reproduce_rejects_unknown_trial(searched):
    tmp, _ = searched
    with pytest.raises(AutopruneError, match="did not complete; completed trials"):
        run(_cfg(tmp, "mode=reproduce", "reproduce.trial=999"), tmp / "repro2")


def test_selector_runs_the_most_accurate_model_within_budget(searched):
    tmp, outcome = searched
    selector = ParetoSelector.load(tmp / "search" / "report")
    front = outcome.report.front
    assert [m.name for m in selector.models] == [c.label for c in front]
    slowest = front[-1]
    x = np.zeros((1, 1, 16, 16), np.float32)
    logits, chosen = selector(x, budget_ms=slowest.latency_ms)
    assert logits.shape == (1, 10)
    assert chosen.name == max(front, key=lambda c: c.val_accuracy).label and chosen.within_budget
    _, fallback = selector(x, budget_ms=0.0)
    assert fallback.name == front[0].label and not fallback.within_budget


def test_calibrate_builds_a_latency_table_and_reports_its_error(searched):
    tmp, _ = searched
    space = tmp / "coarse.yaml"
    space.write_text("ratio: {low: 0.0, high: 0.5, step: 0.5}\n")
    result, path = run(_cfg(tmp, "mode=calibrate", f"search_space={space}", "calibrate.n_validate=3"), tmp / "cal")
    assert path.is_file() and path.parent == tmp / "cal" / "calibrate"
    assert 0.0 <= result.report.share_within_10pct <= 1.0 and len(result.report.measured_ms) == 3
