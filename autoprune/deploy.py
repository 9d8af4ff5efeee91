"""Run-time selection among Pareto models (dynamic, scene-dependent latency budgets).

A search writes a *bundle* next to its report: `models/trial-N.onnx` for every Pareto model and
`bundle.json` with each model's validation accuracy and latency measured on the target profile.
On the device:

    from autoprune.deploy import ParetoSelector
    selector = ParetoSelector.load("outputs/<date>/<time>/report")
    logits, model = selector(x, budget_ms=0.2)   # most accurate model whose latency fits 0.2 ms

If no model fits the budget, the fastest one runs (and `model.within_budget` is False).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from autoprune.errors import ConfigError, first_line
from autoprune.report.collect import ReportData
from autoprune.track import Tracker

log = logging.getLogger("autoprune")


@dataclass(frozen=True)
class BundledModel:
    name: str
    onnx: str              # path relative to the bundle folder
    val_accuracy: float
    latency_ms: float      # median measured on the search's hardware profile
    within_budget: bool = True


def write_bundle(data: ReportData, tracker: Tracker, out_dir: Path) -> Path:
    """Copy the Pareto models' ONNX files out of MLflow into `out_dir/models` and index them."""
    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    models = []
    for c in data.front:
        target = out_dir / "models" / f"trial-{c.trial:04d}.onnx"
        if not target.exists():
            if c.run_id is None:  # its trial has no MLflow run (tracking was down): nothing to download
                log.warning("bundle: %s left out, it has no MLflow run to download its ONNX from", c.label)
                continue
            # downloaded beside the target, then renamed into place: never half-written, and never a
            # rename across filesystems ($TMPDIR on another one fails with EXDEV)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
                try:
                    downloaded = Path(tracker.download(c.run_id, "model.onnx", Path(tmp)))
                except Exception as exc:  # its MLflow run holds no model (logging failed): leave it out
                    log.warning("bundle: %s left out, its ONNX could not be downloaded from MLflow (%s)",
                                c.label, first_line(exc))
                    continue
                downloaded.replace(target)
        models.append(BundledModel(c.label, str(target.relative_to(out_dir)), c.val_accuracy, c.latency_ms))
    index = out_dir / "bundle.json"
    index.write_text(json.dumps({"study": data.study_name, "profile": data.fingerprint,
                                 "models": [asdict(m) for m in models]}, indent=2))
    return index


class ParetoSelector:
    """Holds one ONNX Runtime session per Pareto model; each call runs the best model for the budget."""

    def __init__(self, folder: Path, models: Sequence[BundledModel], threads: int = 1):
        if not models:
            raise ConfigError(f"no models in bundle {folder}: run a search that completes at least one trial")
        self.models = sorted(models, key=lambda m: m.latency_ms)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.sessions = {m.name: ort.InferenceSession(str(Path(folder) / m.onnx), options,
                                                      providers=["CPUExecutionProvider"]) for m in self.models}

    @classmethod
    def load(cls, folder: str | Path, threads: int = 1) -> "ParetoSelector":
        index = Path(folder) / "bundle.json"
        if not index.is_file():
            raise ConfigError(f"{index} not found: point ParetoSelector.load at a search's report folder")
        entries = json.loads(index.read_text())["models"]
        return cls(Path(folder), [BundledModel(**e) for e in entries], threads)

    def select(self, budget_ms: float) -> BundledModel:
        fitting = [m for m in self.models if m.latency_ms <= budget_ms]
        if not fitting:
            fastest = self.models[0]
            return BundledModel(**{**asdict(fastest), "within_budget": False})
        return max(fitting, key=lambda m: (m.val_accuracy, -m.latency_ms))

    def __call__(self, x: np.ndarray, budget_ms: float) -> tuple[np.ndarray, BundledModel]:
        model = self.select(budget_ms)
        session = self.sessions[model.name]
        return session.run(None, {session.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})[0], model


def onnx_accuracy(onnx_path: str | Path, data, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of an ONNX model on a dataset of (input, label) items, run with ONNX Runtime
    (CPU): the deployed artifact itself is scored, not the PyTorch model it was exported from."""
    import torch
    from torch.utils.data import DataLoader

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        logits = session.run(None, {name: x.numpy()})[0]
        correct += int((torch.from_numpy(logits).argmax(dim=1) == y).sum())
        total += len(y)
    if total == 0:
        raise ConfigError("the test split is empty: the task's data factory must return a non-empty test split")
    return correct / total
