"""One candidate, start to finish: prune a copy of the baseline, recover, score, export, measure."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sized, Union, cast
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.config import PruneConfig
from autoprune.hw import HardwareProfile, LatencyBackend, LatencyStats, export_model
from autoprune.hw.artifact import artifact_accuracy, artifact_differs, deploy_in_place, fp32_source
from autoprune.hw.quantize import calibration_arrays
from autoprune.plan import PrunePlan
from autoprune.prune import ChannelPruner
from autoprune.prune.engine import PruningEngine, StructuralPruner
from autoprune.prune.saliency import needs_gradients
from autoprune.prune.schedule import ScheduleConfig
from autoprune.prune.sparsity import model_encoding
from autoprune.recover import RecoverConfig, evaluate, finetune, make_penalty
from autoprune.errors import PruningError
from autoprune.schema import build
from autoprune.weights import load_into, load_weights, shapes
from autoprune.tasks import DataSplits
from autoprune.targets import measure_targets


@dataclass(frozen=True)
class TrialResult:
    """Everything measured about one pruned candidate."""

    plan: PrunePlan
    val_accuracy: float
    latency: LatencyStats
    macs: int
    params: int
    onnx_bytes: int
    onnx_path: Path       # the profile's deployed artifact (int8 profiles: the int8 model, autoprune.hw.artifact)
    model_path: Path      # the state_dict (weights only); CandidateEvaluator.rebuild makes the model again
    seconds: dict = field(default_factory=dict)   # wall time per stage
    weight_sparsity: float = 0.0   # fraction of zeros over all conv / linear weights
    sparse_bytes: int = 0          # parameters with each conv / linear weight in its best (dense/CSR/bitmask) encoding
    dense_bytes: int = 0           # parameters stored dense
    skipped: dict = field(default_factory=dict)   # layer -> why a mask pattern left it dense
    repaired: dict = field(default_factory=dict)  # group -> how its ratio was lowered to a buildable one
    val_accuracy_torch: Optional[float] = None    # the PyTorch model's, where the artifact differs (int8, fp16)
    batch_size: int = 1                           # of the profile: latency_ms is per batch
    targets: dict = field(default_factory=dict)   # search.also_measure: "<profile>/<metric>" -> value
    latency_predicted_ms: Optional[float] = None  # search.screen: predicted before it was measured

    def metrics(self) -> dict[str, float]:
        torch_accuracy = {} if self.val_accuracy_torch is None else {"val_accuracy_torch": self.val_accuracy_torch}
        predicted = {} if self.latency_predicted_ms is None else {
            "latency_predicted_ms": self.latency_predicted_ms,
            "latency_prediction_error": (self.latency_predicted_ms - self.latency.median_ms) / self.latency.median_ms}
        return torch_accuracy | self.targets | predicted | {
            "val_accuracy": self.val_accuracy,   # the deployed artifact's (selection, the front and pick use it)
            "latency_ms": self.latency.median_ms,
            "latency_per_sample_ms": self.latency.median_ms / self.batch_size,
            "latency_p90_ms": self.latency.p90_ms,
            "latency_cv": self.latency.cv,
            "macs": float(self.macs),
            "params": float(self.params),
            "onnx_bytes": float(self.onnx_bytes),
            "weight_sparsity": float(self.weight_sparsity),
            "sparse_bytes": float(self.sparse_bytes),
        }


class LatencyGate(Protocol):
    """Predictor screening (autoprune.search.screen.LatencyScreen): a candidate's latency is predicted first
    and measured only if the gate lets it (`measure_or_skip` raises optuna.TrialPruned otherwise)."""

    def predict(self, plan: PrunePlan) -> float: ...

    def measure_or_skip(self, plan: PrunePlan, metrics: Mapping[str, float], predicted_ms: float,
                        measure: Callable[[], LatencyStats]) -> LatencyStats: ...


@dataclass
class CandidateEvaluator:
    """Holds what every trial shares (baseline, data, pruning engine, recovery, schedule, profile, backend).

    The engine is used as given (never changed): its `data` (the training split) feeds the gradient
    criteria's calibration, so an engine for those criteria is built with it (build_evaluator does)."""

    baseline: nn.Module
    data: DataSplits
    engine: PruningEngine
    recover: RecoverConfig
    profile: HardwareProfile
    backend: LatencyBackend
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    also: tuple = ()   # search.also_measure: autoprune.targets.Target, measured on the fine-tuned model

    def __post_init__(self) -> None:
        self._start: Optional[nn.Module] = None
        self._calibration: Optional[list] = None
        self._widths: Optional[dict[str, int]] = None

    @property
    def pruner(self) -> StructuralPruner:
        return self.engine.structural

    @property
    def example_input(self) -> torch.Tensor:
        return self.pruner.example_input

    # ------------------------------------------------------------------------------------ shared
    def start_model(self) -> nn.Module:
        """What every candidate is pruned from: the baseline, or (recover.regulariser) the baseline after the
        sparsity-inducing phase, computed once per evaluator and reused by every trial."""
        if self._start is None:
            reg = self.recover.regulariser
            if reg.active:
                model = copy.deepcopy(self.baseline)
                torch.manual_seed(self.recover.seed)
                # group lasso acts on the rows that are the groups' channels: a transformer group's last
                # member (attention.output.dense / output.dense) only loses input columns
                layers = [name for g in self.engine.groups(model)
                          for name in (g.members[:-1] if g.kind in ("heads", "ffn") else g.layers)]
                finetune(model, self.data.train, self.recover.train, epochs=reg.epochs,
                         penalty=make_penalty(reg.kind, reg.weight, layers))
                self._start = model.eval()
            else:
                self._start = self.baseline
        return self._start

    def widths(self) -> dict[str, int]:
        """Unpruned width of every group (what a schedule's ratios refer to)."""
        if self._widths is None:
            self._widths = {g.name: g.channels for g in self.engine.groups(self.start_model())}
        return self._widths

    def total_steps(self) -> int:
        """Optimizer steps of one fine-tuning run (what a schedule's prune points refer to)."""
        train_cfg = self.recover.train
        return train_cfg.epochs * -(-len(cast(Sized, self.data.train)) // train_cfg.batch_size)

    def finetune(self, model: nn.Module, **kwargs) -> None:
        """Fine-tune on the training split with recover.train (and the teacher, with recover.kd)."""
        finetune(model, self.data.train, self.recover.train, **kwargs, **self._recover_kwargs())

    def rebuild(self, plan: PrunePlan, weights: Union[Path, Mapping[str, torch.Tensor]]) -> nn.Module:
        """A logged candidate's model without unpickling anything: a copy of the baseline pruned to the
        plan's architecture (kept widths depend on the ratios, not on which channels go), then the logged
        state_dict loaded weights-only and strictly (WeightsError when it does not fit)."""
        state = load_weights(weights) if isinstance(weights, (str, Path)) else weights
        model = copy.deepcopy(self.baseline)
        self.engine.apply(model, _skeleton(plan))
        return load_into(model, state, f"the weights of plan {plan.to_json()[:200]}").eval()

    def calibration(self) -> list:
        """int8 calibration batches from the train split (computed once)."""
        if self._calibration is None:
            self._calibration = calibration_arrays(self.data.train)
        return self._calibration

    def deployed(self, exported, profile: Optional[HardwareProfile] = None):
        """The exported model as `profile` (default: the search's) deploys it (autoprune.hw.artifact)."""
        profile = profile or self.profile
        return deploy_in_place(exported, profile, self.calibration() if profile.precision == "int8" else None)

    def artifact_scores(self, deployed, split: str, torch_accuracy: float) -> dict[str, float]:
        """`{split}_accuracy` of the deployed artifact run by the profile's runtime and `{split}_accuracy_torch`
        (the PyTorch model's) where they differ; else `{split}_accuracy` as given."""
        if not artifact_differs(self.profile):
            return {f"{split}_accuracy": torch_accuracy}
        return {f"{split}_accuracy": artifact_accuracy(deployed, self.profile, getattr(self.data, split)),
                f"{split}_accuracy_torch": torch_accuracy}

    def _recover_kwargs(self) -> dict:
        kd = self.recover.kd
        if not kd.enabled:
            return {}
        return {"teacher": self.baseline, "kd_temperature": kd.temperature, "kd_alpha": kd.alpha}

    # ------------------------------------------------------------------------------------ trial
    def evaluate(self, plan: PrunePlan, workdir: Path,
                 monitor: Optional[Callable[[int, float, float], None]] = None,
                 screen: Optional[LatencyGate] = None) -> TrialResult:
        """prune → export + measure → fine-tune → score → export the fine-tuned weights.

        Latency is measured before fine-tuning: the graph is final then (fine-tuning changes weight
        values only, which dense kernels do not care about), so `monitor(epoch, val_accuracy,
        latency_ms)`, called after each fine-tuning epoch, can stop a hopeless candidate by raising.
        One-shot plans measure the pruned model itself; gradual schedules (iterative, agp, lth) measure
        the final architecture, pruned one-shot from the same start, and check after recovery that the
        recovered model has exactly its shapes. Mask patterns keep their masks through fine-tuning (the
        exported model contains the zeros); dense runtimes time them like the unpruned model.

        With `screen` (search.screen), latency is predicted up front (the monitor sees the prediction) and
        the deployed fine-tuned model is measured at the end only if `screen.measure_or_skip` lets it."""
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[stage] = seconds.get(stage, 0.0) + now - clock
            clock = now

        workdir = Path(workdir)
        start = self.start_model()
        schedule = self.schedule.schedule
        torch.manual_seed(self.recover.seed)
        # the model whose architecture is timed: the candidate itself (one-shot) or its one-shot twin
        measured = copy.deepcopy(start)
        pruned = self.engine.apply(measured, plan if schedule.prunes_up_front else _skeleton(plan))
        final_shapes = None if schedule.prunes_up_front else shapes(measured.state_dict())
        lap("prune")
        predicted = screen.predict(plan) if screen is not None else None
        latency = None if screen is not None else self.backend.measure(
            self.deployed(export_model(measured, self.example_input, workdir)), self.profile)
        lap("measure")
        monitor_ms = predicted if latency is None else latency.median_ms
        assert monitor_ms is not None   # screening predicts what it does not measure
        on_epoch = None
        if monitor is not None:
            on_epoch = lambda epoch, m: monitor(epoch, evaluate(m, self.data.val), monitor_ms)  # noqa: E731
        if schedule.prunes_up_front:
            model, masks, skipped = measured, pruned.masks, pruned.skipped
            self.finetune(model, masks=masks, on_epoch=on_epoch)
        else:
            del measured
            torch.manual_seed(self.recover.seed)
            model, masks, skipped = schedule.recover(self, start, plan, on_epoch)
        lap("finetune")
        if final_shapes is not None and shapes(model.state_dict()) != final_shapes:
            raise PruningError("the recovered model's architecture differs from the one measured before fine-tuning "
                               f"(schedule {schedule.name}): please report this plan: {plan.to_json()}")
        val_accuracy = evaluate(model, self.data.val)
        macs, params = tp.utils.count_ops_and_params(model, self.example_input)
        encoding = model_encoding(model)
        lap("score")
        exported = export_model(model, self.example_input, workdir)  # the fine-tuned model.onnx and model.pt
        lap("export")
        deployed = self.deployed(exported)   # int8: model.onnx is now the int8 model, calibrated on train batches
        scores = self.artifact_scores(deployed, "val", val_accuracy)
        targets = measure_targets(self.also, fp32_source(exported), self.calibration, self.data.val, val_accuracy)
        lap("artifact")
        assert exported.weights_path is not None  # export_model always writes the weights
        if latency is None:   # screening: measured only if it could reach the front (else optuna.TrialPruned)
            assert screen is not None and predicted is not None
            known = {"val_accuracy": scores["val_accuracy"], "macs": float(macs), "params": float(params),
                     "onnx_bytes": float(deployed.onnx_path.stat().st_size)}
            latency = screen.measure_or_skip(plan, known, predicted,
                                             lambda: self.backend.measure(deployed, self.profile))
            lap("measure")
        return TrialResult(plan, scores["val_accuracy"], latency, int(macs), int(params),
                           deployed.onnx_path.stat().st_size, deployed.onnx_path, exported.weights_path, seconds,
                           encoding.weight_sparsity, encoding.sparse, encoding.dense, dict(skipped), dict(pruned.repaired),
                           scores.get("val_accuracy_torch"), self.profile.batch_size, targets, predicted)


def _skeleton(plan: PrunePlan) -> PrunePlan:
    """A plan with the same architecture that needs no gradients (kept widths depend on the ratios only)."""
    return dataclasses.replace(plan, importance="l2") if needs_gradients(plan.importance) else plan


def build_evaluator(prune: Any, recover: Any, baseline: nn.Module, data: DataSplits,
                    pruner: StructuralPruner, profile: HardwareProfile, backend: LatencyBackend,
                    also: tuple = ()) -> CandidateEvaluator:
    """The evaluator a search uses, from the `prune:` and `recover:` config sections (typed sections from
    autoprune.config, or plain mappings checked as them)."""
    prune = build(PruneConfig, prune, "prune")
    recover = RecoverConfig.coerce(recover)
    engine = PruningEngine(pruner, data.train, prune.unstructured_scope, prune.calibration_batches,
                           recover.train.batch_size, recover.seed)
    return CandidateEvaluator(baseline, data, engine, recover, profile, backend, ScheduleConfig.from_prune(prune),
                              tuple(also))


__all__ = ["CandidateEvaluator", "ChannelPruner", "TrialResult", "build_evaluator"]
