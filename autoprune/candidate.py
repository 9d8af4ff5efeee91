"""One candidate, start to finish: prune a copy of the baseline, recover, score, export, measure."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.hw import HardwareProfile, LatencyBackend, LatencyStats, export_model
from autoprune.plan import PrunePlan
from autoprune.prune import ChannelPruner
from autoprune.recover import TrainConfig, evaluate, train
from autoprune.tasks import DataSplits


@dataclass(frozen=True)
class TrialResult:
    """Everything measured about one pruned candidate."""

    plan: PrunePlan
    val_accuracy: float
    latency: LatencyStats
    macs: int
    params: int
    onnx_bytes: int
    onnx_path: Path
    model_path: Path
    seconds: dict = field(default_factory=dict)   # wall time per stage

    def metrics(self) -> dict[str, float]:
        return {
            "val_accuracy": self.val_accuracy,
            "latency_ms": self.latency.median_ms,
            "latency_p90_ms": self.latency.p90_ms,
            "latency_cv": self.latency.cv,
            "macs": float(self.macs),
            "params": float(self.params),
            "onnx_bytes": float(self.onnx_bytes),
        }


@dataclass
class CandidateEvaluator:
    """Holds what every trial shares (baseline, data, pruner, profile, backend)."""

    baseline: nn.Module
    data: DataSplits
    pruner: ChannelPruner
    recover: TrainConfig
    profile: HardwareProfile
    backend: LatencyBackend

    @property
    def example_input(self) -> torch.Tensor:
        return self.pruner.example_input

    def evaluate(self, plan: PrunePlan, workdir: Path,
                 monitor: Optional[Callable[[int, float, float], None]] = None) -> TrialResult:
        """prune → export + measure → fine-tune → score → export the fine-tuned weights.

        Latency is measured right after pruning: the graph is final then (fine-tuning changes weight
        values only, which dense kernels do not care about), so `monitor(epoch, val_accuracy,
        latency_ms)`, called after each fine-tuning epoch, can stop a hopeless candidate by raising."""
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[stage] = now - clock
            clock = now

        workdir = Path(workdir)
        model = copy.deepcopy(self.baseline)
        torch.manual_seed(self.recover.seed)
        self.pruner.apply(model, plan)
        macs, params = tp.utils.count_ops_and_params(model, self.example_input)
        lap("prune")
        latency = self.backend.measure(export_model(model, self.example_input, workdir), self.profile)
        lap("measure")
        on_epoch = None
        if monitor is not None:
            on_epoch = lambda epoch, m: monitor(epoch, evaluate(m, self.data.val), latency.median_ms)  # noqa: E731
        train(model, self.data.train, self.recover, on_epoch=on_epoch)
        lap("finetune")
        val_accuracy = evaluate(model, self.data.val)
        lap("score")
        exported = export_model(model, self.example_input, workdir)  # the fine-tuned model.onnx and model.pt
        lap("export")
        return TrialResult(plan, val_accuracy, latency, int(macs), int(params), exported.onnx_path.stat().st_size,
                           exported.onnx_path, exported.torch_path, seconds)
