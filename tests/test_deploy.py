"""The deployment bundle: the Pareto models copied out of a real MLflow store, runnable by ParetoSelector."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.deploy import ParetoSelector, write_bundle
from autoprune.hw.export import export_onnx
from autoprune.report.collect import Candidate, ReportData
from autoprune.track import Tracker
from factories import tiny_cnn

SHM = Path("/dev/shm")  # tmpfs on Linux: another filesystem than the test's tmp_path


def _report(run_ids: list[str]) -> ReportData:
    """A report whose front is one model per MLflow run (accuracy and latency as a search would record)."""
    front = [Candidate(trial=i, val_accuracy=0.5 + 0.1 * i, latency_ms=1.0 + i, latency_p90_ms=1.0 + i, params=1,
                       macs=1, onnx_bytes=1, run_id=run_id) for i, run_id in enumerate(run_ids)]
    baseline = Candidate(-1, 0.9, 3.0, 3.0, 1, 1, 1)
    return ReportData("bundle", baseline, front, front, 0, [], {"name": "test"}, 0.1)


@pytest.fixture
def other_fs_tmpdir(monkeypatch):
    """$TMPDIR on tmpfs (/dev/shm), so that the working directory and the temp dir differ in device."""
    if not SHM.is_dir():
        pytest.skip("/dev/shm (tmpfs) is not available")
    folder = SHM / f"autoprune-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()


def test_bundle_holds_the_models_when_tmpdir_is_on_another_filesystem(tmp_path, other_fs_tmpdir):
    work = tmp_path / "work"
    work.mkdir()
    assert os.stat(work).st_dev != os.stat(tempfile.gettempdir()).st_dev  # the condition under test holds
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "bundle")
    run_ids = []
    for seed in range(2):
        torch.manual_seed(seed)
        onnx = export_onnx(tiny_cnn().eval(), torch.zeros(1, 1, 8, 8), tmp_path / f"m{seed}" / "model.onnx")
        run_ids.append(tracker.start_child(f"trial-{seed}", "trial"))
        tracker.log_artifacts(run_ids[-1], [onnx])
    index = write_bundle(_report(run_ids), tracker, work / "report")
    entries = json.loads(index.read_text())["models"]
    assert [e["name"] for e in entries] == ["#0", "#1"]
    assert sorted(p.name for p in (work / "report" / "models").iterdir()) == ["trial-0000.onnx", "trial-0001.onnx"]
    logits, chosen = ParetoSelector.load(work / "report")(np.zeros((1, 1, 8, 8), np.float32), budget_ms=5.0)
    assert logits.shape == (1, 3) and chosen.name == "#1"
    assert list(other_fs_tmpdir.iterdir()) == []  # nothing left behind in $TMPDIR


def test_a_model_missing_from_mlflow_is_left_out_with_its_reason(tmp_path, caplog):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "bundle")
    empty = tracker.start_child("trial-0", "trial")  # logging failed: no model.onnx in the run
    index = write_bundle(_report([empty]), tracker, tmp_path / "report")
    assert json.loads(index.read_text())["models"] == []
    assert "#0 left out, its ONNX could not be downloaded from MLflow" in caplog.text
    assert [p.name for p in (tmp_path / "report" / "models").iterdir()] == []  # no half-written file
