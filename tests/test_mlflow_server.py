"""A real MLflow tracking server on loopback: the search, trials, metrics, report artifacts and the
registered model with its alias must be visible through its REST API (what the UI reads)."""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from servers import serving

from autoprune.cli import run

pytestmark = pytest.mark.slow


def _api(base: str, path: str, body: dict | None = None) -> dict:
    if body is None:
        request = urllib.request.Request(base + path)
    else:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    mlflow = Path(sys.executable).with_name("mlflow")
    command = lambda port: [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),  # noqa: E731
                            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                            "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"]
    with serving(command, "/health", tmp_path / "server.log", cwd=tmp_path) as base:
        yield base


def test_search_and_pick_are_visible_through_the_server(tmp_path, mlflow_server):
    from conftest import compose_config

    cfg = lambda *o: compose_config(tmp_path, f"tracking.uri={mlflow_server}", "tracking.experiment=ui",  # noqa: E731
                                    "search.n_trials=3", *o)
    outcome = run(cfg(), tmp_path / "out")
    run(cfg("mode=pick", "pick.model_name=ui-model", f"pick.export={tmp_path / 'm.onnx'}"), tmp_path / "pick")

    exp = _api(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui")["experiment"]
    runs = _api(mlflow_server, "/api/2.0/mlflow/runs/search",
                {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}  # noqa: E731
    roles = [tags(r).get("autoprune.role") for r in runs]
    assert roles.count("search") == 1 and roles.count("baseline") == 1 and roles.count("trial") == 3
    trial = next(r for r in runs if tags(r).get("autoprune.role") == "trial")
    metrics = {m["key"] for m in trial["data"]["metrics"]}
    assert {"val_accuracy", "latency_ms", "latency_p90_ms", "latency_cv", "macs", "params", "onnx_bytes"} <= metrics
    parent = outcome.parent_run_id
    listed = _api(mlflow_server, f"/api/2.0/mlflow/artifacts/list?run_id={parent}&path=report")["files"]
    assert {"report/pareto.csv", "report/pareto.png", "report/report.html"} <= {f["path"] for f in listed}
    query = urllib.parse.urlencode({"name": "ui-model", "alias": "deploy"})
    version = _api(mlflow_server, f"/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    assert version["name"] == "ui-model" and "deploy" in version.get("aliases", [])
    with urllib.request.urlopen(mlflow_server + "/", timeout=30) as page:  # the UI itself is served
        assert page.status == 200 and b"<html" in page.read().lower()
