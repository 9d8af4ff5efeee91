"""Serving the picked model the way the README says: `mlflow models serve -m models:/<name>@deploy
--env-manager local` with the venv's bin first on PATH (MLflow execs `uvicorn` by name), on loopback.
The served predictions must be the ONNX model's outputs on the test split, and score its test accuracy."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from servers import serving

from autoprune.cli import run
from autoprune.tasks.digits import load

pytestmark = pytest.mark.slow


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_picked_model_serves_its_test_predictions(tmp_path):
    from conftest import compose_config

    run(compose_config(tmp_path, "search.n_trials=1", "search.warm_start=[0.5]"), tmp_path / "search")
    picked = run(compose_config(tmp_path, "mode=pick", "pick.model_name=served",
                                f"pick.export={tmp_path / 'model.onnx'}"), tmp_path / "pick")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = lambda port: [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/served@deploy",  # noqa: E731
                            "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)]
    with serving(command, "/ping", tmp_path / "serve.log", cwd=tmp_path, env=env) as base:
        x, y = load(size=16).test.tensors   # the FAST task's test split (conftest.FAST: task.data.size=16)
        served = np.asarray(_post(base + "/invocations", {"inputs": x.numpy().tolist()})["predictions"]["output"])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    accuracy = float((served.argmax(axis=1) == y.numpy()).mean())
    assert accuracy == pytest.approx(picked.chosen.test_accuracy, abs=1e-6)
