"""CandidateEvaluator on a tiny model with random data: one candidate at a time, no search, no Hydra.

Real pruning, real fine-tuning (one short epoch), real ONNX export and ONNX Runtime timing."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.data import TensorDataset

from autoprune.candidate import CandidateEvaluator, build_evaluator
from autoprune.hw import get_backend, load_profile
from autoprune.plan import PrunePlan
from autoprune.prune import ChannelPruner, PruningEngine, output_layers
from autoprune.prune.schedule import ScheduleConfig
from autoprune.recover import RecoverConfig, TrainConfig, evaluate
from autoprune.tasks import DataSplits
from autoprune.tasks.models import resnet_small

DATA = Path(__file__).parent / "data"
STAGES = {"prune", "measure", "finetune", "score", "export", "artifact"}


def splits(n: int = 64) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    part = lambda k: TensorDataset(torch.randn(k, 1, 16, 16, generator=g), torch.randint(0, 10, (k,), generator=g))  # noqa: E731
    return DataSplits(part(n), part(32), part(32))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = resnet_small(widths=(8, 8, 8)).eval()
    data = splits()
    example = data.example_batch(1)
    pruner = ChannelPruner(example, output_layers(model, example), round_to=1)
    profile = load_profile(str(DATA / "fast-cpu.yaml"))
    return model, data, pruner, profile, get_backend(profile)


def make(setup, schedule: ScheduleConfig = ScheduleConfig(), engine: PruningEngine | None = None):
    model, data, pruner, profile, backend = setup
    recover = RecoverConfig(TrainConfig(epochs=1, batch_size=32))
    engine = engine or PruningEngine(pruner, data.train, batch_size=32)
    return CandidateEvaluator(model, data, engine, recover, profile, backend, schedule)


def half(evaluator: CandidateEvaluator, importance: str = "l2") -> PrunePlan:
    return PrunePlan.uniform([g.name for g in evaluator.engine.groups(evaluator.baseline)], 0.5, importance)


def test_a_candidate_is_pruned_measured_finetuned_and_exported(setup, tmp_path):
    evaluator = make(setup)
    baseline_params = sum(p.numel() for p in evaluator.baseline.parameters())
    plan = half(evaluator)
    result = evaluator.evaluate(plan, tmp_path)
    assert result.plan == plan and set(result.seconds) == STAGES
    assert 0 < result.params < baseline_params and result.macs > 0
    assert result.onnx_path.is_file() and result.onnx_bytes == result.onnx_path.stat().st_size
    assert result.latency.n >= 10 and result.latency.median_ms > 0
    assert 0.0 <= result.val_accuracy <= 1.0
    # the logged weights rebuild the fine-tuned model (weights only, architecture from the plan)
    rebuilt = evaluator.rebuild(plan, result.model_path)
    assert sum(p.numel() for p in rebuilt.parameters()) == result.params
    assert evaluate(rebuilt, evaluator.data.val) == pytest.approx(result.val_accuracy)
    assert sum(p.numel() for p in evaluator.baseline.parameters()) == baseline_params  # baseline untouched


def test_the_engine_passed_in_is_used_as_given(setup):
    _, data, pruner, _, _ = setup
    engine = PruningEngine(pruner)   # no data: the evaluator must not fill it in
    evaluator = make(setup, engine=engine)
    assert evaluator.engine is engine and engine.data is None and evaluator.pruner is pruner
    built = build_evaluator({}, {"epochs": 1}, setup[0], data, pruner, setup[3], setup[4])
    assert built.engine.data is data.train and isinstance(built.recover, RecoverConfig)


def test_a_gradual_schedule_ends_at_the_one_shot_architecture(setup, tmp_path):
    oneshot = make(setup)
    iterative = make(setup, ScheduleConfig("iterative", steps=2))
    plan = half(oneshot)
    a = oneshot.evaluate(plan, tmp_path / "oneshot")
    b = iterative.evaluate(plan, tmp_path / "iterative")
    assert (a.params, a.macs) == (b.params, b.macs)


def test_the_monitor_sees_each_epoch_and_can_stop_the_candidate(setup, tmp_path):
    evaluator = make(setup)
    seen = []

    def monitor(epoch: int, val_accuracy: float, latency_ms: float) -> None:
        seen.append((epoch, latency_ms))
        raise optuna.TrialPruned("hopeless")

    with pytest.raises(optuna.TrialPruned, match="hopeless"):
        evaluator.evaluate(half(evaluator), tmp_path, monitor)
    assert len(seen) == 1 and seen[0][0] == 0 and seen[0][1] > 0
