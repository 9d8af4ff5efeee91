"""Rung-0 scoring: adaptive BatchNorm (statistics re-estimated, weights untouched) on the real default task's
small ResNet and digits data, latency measured with ONNX Runtime or predicted by a latency table, and the
short fine-tune of models without BatchNorm (MiniLM)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from autoprune.calibrate import layer_specs
from autoprune.candidate import build_evaluator
from autoprune.context import build_context
from autoprune.errors import ConfigError
from autoprune.hw.predictor import LatencyTable
from autoprune.plan import PrunePlan
from autoprune.recover import evaluate
from autoprune.recover.adaptive_bn import batchnorms, recalibrate_batchnorm
from autoprune.rung0 import ADAPTIVE_BN, SHORT_FINETUNE, Rung0Config, Rung0Scorer
from autoprune.tasks.digits import load
from autoprune.tasks.models import resnet_small


@pytest.fixture(scope="module")
def digits():
    return load(size=16)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_adaptive_bn_re_estimates_statistics_and_leaves_weights(digits):
    torch.manual_seed(0)
    model = resnet_small(widths=(8, 16, 16)).eval()
    for bn in batchnorms(model):   # stale statistics, as after pruning a trained model
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(9.0)
    before = _params(model)
    n = len(digits.train)
    assert recalibrate_batchnorm(model, digits.train, batches=1, batch_size=n) == len(batchnorms(model)) > 0
    assert not model.training and all(not m.training for m in model.modules())
    after = _params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)   # no gradient step
    assert all(bn.momentum == 0.1 for bn in batchnorms(model))     # momentum restored
    # One batch holding the whole training split: the stem's BatchNorm mean is the mean of the stem conv's output.
    x = torch.stack([digits.train[i][0] for i in range(n)])
    with torch.no_grad():
        conv_out = model.stem[0](x)
    assert torch.allclose(model.stem[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.stem[1].running_var, conv_out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)


def test_adaptive_bn_without_batchnorm_changes_nothing(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, digits.train) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from tests.conftest import compose_config

    return build_context(compose_config(tmp_path_factory.mktemp("rung0")))


def test_rung0_scores_a_pruned_candidate_with_adaptive_bn(context):
    ev = context.evaluator
    plan = context.space.uniform(0.5)
    baseline = copy.deepcopy(ev.baseline.state_dict())
    scorer = Rung0Scorer(ev)
    result = scorer.score(plan)
    assert result.method == scorer.method == ADAPTIVE_BN
    assert result.latency_source == "measured" and result.latency_ms > 0
    assert set(result.seconds) == {"prune", "recover", "score", "latency"}
    assert 0.0 <= result.val_accuracy <= 1.0 and result.metrics()["val_accuracy"] == result.val_accuracy
    assert all(torch.equal(baseline[k], v) for k, v in ev.baseline.state_dict().items())  # the baseline is untouched
    # the same as pruning by hand and re-estimating the statistics: only BatchNorm buffers differ from the pruned model
    raw = copy.deepcopy(ev.start_model())
    torch.manual_seed(ev.recover.seed)
    ev.engine.apply(raw, plan)
    tuned = copy.deepcopy(raw)
    recalibrate_batchnorm(tuned, ev.data.train, 8, ev.recover.train.batch_size, ev.recover.seed)
    assert result.val_accuracy == evaluate(tuned, ev.data.val)
    assert all(torch.equal(a, b) for a, b in zip(raw.parameters(), tuned.parameters()))
    assert not all(torch.equal(a.running_mean, b.running_mean) for a, b in zip(batchnorms(raw), batchnorms(tuned)))
    assert result.params < sum(p.numel() for p in ev.baseline.parameters())


def test_rung0_latency_from_a_table_is_predicted_not_measured(context):
    ev = context.evaluator
    specs = layer_specs(ev.baseline, ev.pruner)
    groups = {g.name: g.channels for g in context.groups}
    # a table whose one entry per layer is its multiply-adds: off-grid widths scale with them
    entries = {s.name: {(s.in_channels, s.out_channels): 1e-6 * s.in_channels * s.out_channels} for s in specs}
    table = LatencyTable("t", "d", ev.pruner.round_to, groups, specs, entries, scale=2.0, offset_ms=0.1)
    plan = context.space.uniform(0.5)
    result = Rung0Scorer(ev, Rung0Config(measure=True), table).score(plan)
    assert result.latency_source == "predicted"
    assert result.latency_ms == pytest.approx(table.predict_plan(plan))
    assert Rung0Scorer(ev, Rung0Config(measure=False)).score(plan).latency_ms is None


def test_rung0_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="bn_batches"):
        Rung0Config(bn_batches=0)
    with pytest.raises(ConfigError, match="steps"):
        Rung0Config(steps=0)


def test_models_without_batchnorm_get_a_short_finetune(tmp_path):
    """MiniLM (LayerNorm only): rung 0 is a short fine-tune; deterministic for a plan."""
    from autoprune.hw import get_backend
    from autoprune.hw.profile import HardwareProfile
    from autoprune.prune import make_pruner, output_layers
    from autoprune.tasks.minilm import load as load_sentences
    from autoprune.tasks.minilm import minilm

    torch.manual_seed(0)
    data = load_sentences(limit=60)
    model = minilm(num_layers=1).eval()
    example = data.example_batch(1)
    profile = HardwareProfile("rung0-test", warmup_runs=2, min_repeats=5, max_repeats=20, max_seconds=0.2)
    pruner = make_pruner(model, example, output_layers(model, example), profile.round_to)
    ev = build_evaluator({}, {"epochs": 3, "lr": 0.01, "batch_size": 4}, model, data, pruner, profile,
                         get_backend(profile))
    scorer = Rung0Scorer(ev, Rung0Config(measure=False))
    assert scorer.method == SHORT_FINETUNE
    assert scorer.finetune_steps() == 5          # 10 % of 3 epochs x 9 steps, at least 5
    plan = PrunePlan.uniform([g.name for g in pruner.groups(model)], 0.5)
    first, second = scorer.score(plan), scorer.score(plan)
    assert first.method == SHORT_FINETUNE and first.val_accuracy == second.val_accuracy
    assert first.params < sum(p.numel() for p in model.parameters())
    assert Rung0Scorer(ev, Rung0Config(steps=2, measure=False)).finetune_steps() == 2
