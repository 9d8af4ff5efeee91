import pytest
import torch
import torch.nn as nn

from autoprune.errors import ConfigError, PruningError
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune import ChannelPruner, output_layers
from autoprune.tasks.models import resnet_small


def _pruner(model, example, round_to=8):
    return ChannelPruner(example, output_layers(model, example), round_to)


def test_output_layer_is_detected(model, example):
    assert output_layers(model, example) == ["fc"]


def test_groups_follow_residual_coupling(model, example):
    groups = {g.name: g for g in _pruner(model, example).groups(model)}
    # stem + block0 output are coupled through the identity shortcut; each stage's block output
    # is coupled with its projection shortcut; each block's inner conv is a group of its own.
    assert set(groups) == {"stem.0", "layers.0.0.conv1", "layers.1.0.conv1", "layers.1.0.conv2",
                           "layers.2.0.conv1", "layers.2.0.conv2"}
    assert groups["stem.0"].channels == 32
    assert "layers.0.0.conv2" in groups["stem.0"].members
    assert "layers.1.0.shortcut.0" in groups["layers.1.0.conv2"].members
    assert groups["layers.2.0.conv2"].channels == 128


def test_apply_gives_exact_channel_counts(model, example):
    plan = PrunePlan({
        "stem.0": GroupPlan(0.5),              # 32 -> 16
        "layers.0.0.conv1": GroupPlan(0.3),    # 32 -> 22.4 -> 24
        "layers.1.0.conv1": GroupPlan(0.9),    # 64 -> 8 (floor of one multiple)
        "layers.2.0.conv2": GroupPlan(0.25),   # 128 -> 96
    })
    reference = model(example)
    _pruner(model, example).apply(model, plan)
    assert model.stem[0].out_channels == 16
    assert model.layers[0][0].conv2.out_channels == 16       # coupled to the stem by the residual add
    assert model.layers[0][0].conv1.out_channels == 24
    assert model.layers[1][0].conv1.out_channels == 8
    assert model.layers[1][0].conv2.out_channels == 64       # not in the plan: untouched
    assert model.layers[2][0].conv2.out_channels == 96
    assert model.layers[2][0].shortcut[0].out_channels == 96
    assert model.fc.in_features == 96 and model.fc.out_features == 10
    out = model(example)
    assert out.shape == reference.shape
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < sum(p.numel() for p in resnet_small(widths=(32, 64, 128)).parameters())


def test_l2_removes_the_smallest_channels(example):
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        for i in range(8):  # channel i has norm proportional to i+1
            model[0].weight[i].fill_(float(i + 1))
    kept_before = model[0].weight[:, 0, 0, 0].clone()
    ChannelPruner(example, ["2"], round_to=1).apply(model, PrunePlan({"0": GroupPlan(0.5)}))
    assert model[0].weight[:, 0, 0, 0].tolist() == kept_before[4:].tolist()


def test_unknown_group_is_rejected(model, example):
    with pytest.raises(PruningError, match="does not have"):
        _pruner(model, example).apply(model, PrunePlan({"nope": GroupPlan(0.5)}))


def test_unknown_importance_is_rejected(model, example):
    with pytest.raises(ConfigError, match="prune.importance"):
        _pruner(model, example).apply(model, PrunePlan({"stem.0": GroupPlan(0.5)}, importance="magic"))


def test_unknown_ignored_layer_is_rejected(model, example):
    with pytest.raises(PruningError, match="prune.ignore"):
        ChannelPruner(example, ["not_a_layer"]).groups(model)


def test_a_model_is_traced_again_only_when_its_structure_changed(example):
    torch.manual_seed(0)
    model = resnet_small(widths=(8, 8, 8)).eval()
    pruner = ChannelPruner(example, output_layers(model, example))
    traces = []
    trace = pruner._trace
    pruner._trace = lambda m: traces.append(m) or trace(m)
    first = pruner.groups(model)
    assert pruner.groups(model) == first and len(traces) == 1           # unchanged: the trace is reused
    pruner.apply(model, PrunePlan({first[0].name: GroupPlan(0.5)}, "l2"))
    assert len(traces) == 1                                             # applied on that same trace
    after = pruner.groups(model)
    assert len(traces) == 2 and after[0].channels < first[0].channels  # pruned: traced afresh
    fresh = ChannelPruner(example, output_layers(model, example)).groups(model)
    assert [(g.name, g.channels, g.max_ratio) for g in after] == [(g.name, g.channels, g.max_ratio) for g in fresh]
