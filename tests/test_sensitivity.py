"""Sensitivity mode: each group pruned alone at several ratios, curves, prior search space, MLflow."""

from __future__ import annotations

import csv

import pytest
import yaml
from mlflow.tracking import MlflowClient

from autoprune.errors import ConfigError
from autoprune.search.space import load_space
from autoprune.sensitivity import run_sensitivity


def test_sensitivity_records_every_group_at_every_ratio_and_writes_a_usable_prior(make_cfg, tmp_path):
    cfg = make_cfg("sensitivity.ratios=[0.75,0.5]", "sensitivity.max_drop=0.05", "tracking.experiment=sens")
    result = run_sensitivity(cfg, tmp_path / "out")
    groups = ["stem.0", "layers.0.0.conv1", "layers.1.0.conv1", "layers.1.0.conv2", "layers.2.0.conv1",
              "layers.2.0.conv2"]
    assert sorted(result.groups) == sorted(groups)
    assert len(result.points) == 2 * len(groups)
    for p in result.points:
        assert p.accuracy_drop == pytest.approx(result.baseline_accuracy - p.val_accuracy)
        assert p.latency_ms > 0 and p.params < result.baseline_params   # channels really removed
    for g in groups:  # the prior: highest ratio such that it and every lower one stay within max_drop
        curve = result.curve(g)
        assert [p.ratio for p in curve] == [0.5, 0.75]
        expected = 0.0
        for p in curve:
            if p.accuracy_drop > 0.05:
                break
            expected = p.ratio
        assert result.prior[g] == expected

    files = result.files
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(files["csv"].open()))
    assert len(rows) == 1 + len(result.points) and rows[0]["group"] == "baseline"
    prior = yaml.safe_load(files["prior"].read_text())
    space = load_space(str(files["prior"]), groups)
    highs = {d.name: d.range.high for d in space.dimensions}
    assert highs == result.prior and prior["per_group"]["stem.0"]["high"] == result.prior["stem.0"]
    table = result.table().splitlines()
    assert table[0].split() == ["group", "drop@0.5", "drop@0.75", "prior"] and len(table) == 1 + len(groups)

    client = MlflowClient(cfg.tracking.uri)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["autoprune.role"] == "sensitivity" and parent.info.status == "FINISHED"
    assert parent.data.metrics["baseline_val_accuracy"] == pytest.approx(result.baseline_accuracy)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "sensitivity")}
    assert artifacts == {"sensitivity/sensitivity.csv", "sensitivity/sensitivity.json", "sensitivity/sensitivity.png",
                         "sensitivity/prior.yaml"}
    exp = client.get_experiment_by_name("sens")
    children = client.search_runs([exp.experiment_id], "tags.`autoprune.role` = 'sensitivity_group'")
    assert len(children) == len(groups)
    assert all(c.data.tags["mlflow.parentRunId"] == result.run_id for c in children)
    history = client.get_metric_history(children[0].info.run_id, "accuracy_drop")
    assert sorted(m.step for m in history) == [50, 75]


def test_sensitivity_with_masks_and_no_timing(make_cfg, tmp_path):
    cfg = make_cfg("sensitivity.ratios=[0.5]", "sensitivity.pattern=unstructured", "sensitivity.measure=false",
                   "sensitivity.max_groups=2", "sensitivity.finetune_epochs=1")
    result = run_sensitivity(cfg, tmp_path / "out")
    assert len(result.points) == 2 and all(p.latency_ms is None for p in result.points)
    assert all(p.params == result.baseline_params for p in result.points)   # masks remove nothing
    assert yaml.safe_load(result.files["prior"].read_text())["patterns"] == ["unstructured"]


@pytest.mark.parametrize("override, message", [("sensitivity.ratios=[]", "non-empty list"),
                                               ("sensitivity.ratios=[1.5]", "outside \\(0, 1\\)"),
                                               ("+sensitivity.steps=3", "unknown key")])
def test_bad_sensitivity_settings_are_rejected(make_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_sensitivity(make_cfg(override), tmp_path / "out")
