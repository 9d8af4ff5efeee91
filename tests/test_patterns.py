"""Every pruning pattern, exact in its counts: channel, unstructured (layer / global), N:M, block; mixed
plans; masks kept through fine-tuning and present in the exported ONNX; what sparsity buys (bytes, not
latency); per-layer-type pattern choices in the search space; each zoo model through prune -> ONNX -> ORT."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from autoprune.errors import ConfigError
from autoprune.hw import export_onnx
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune import ChannelPruner, PruningEngine, kept_channels, output_layers
from autoprune.search.space import build_space
from autoprune.tasks import zoo


def _engine(model, example, scope="layer", round_to=8):
    return PruningEngine(ChannelPruner(example, output_layers(model, example), round_to), unstructured_scope=scope)


def _zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def test_plan_round_trips_pattern_options_and_validates_them():
    plan = PrunePlan({"a": GroupPlan(0.5, "nm", (1, 4)), "b": GroupPlan(0.3, "block", block=(4, 4)),
                      "c": GroupPlan(0.2, "unstructured"), "d": GroupPlan(0.1)}, "taylor")
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan and again.groups["a"].nm == (1, 4) and again.groups["b"].block == (4, 4)
    assert plan.to_dict()["groups"]["d"] == {"ratio": 0.1, "pattern": "channel"}   # old plans stay readable
    assert PrunePlan.from_dict({"groups": {"x": {"ratio": 0.5}}}).groups["x"] == GroupPlan(0.5)
    assert set(plan.mask_part().groups) == {"a", "b", "c"} and set(plan.channel_part().groups) == {"d"}
    assert GroupPlan(0.5, "nm", (2, 4)).sparsity == 0.5 and GroupPlan(0.0, "nm").sparsity == 0.0
    with pytest.raises(ConfigError, match="unknown pruning pattern 'holes'"):
        GroupPlan(0.5, "holes")
    with pytest.raises(ConfigError, match="1 <= N < M"):
        GroupPlan(0.5, "nm", (4, 4))
    with pytest.raises(ConfigError, match="block shape"):
        GroupPlan(0.5, "block", block=(1, 1))


def test_scaled_plans_reach_the_plan_only_at_the_end():
    plan = PrunePlan({"c": GroupPlan(0.6), "n": GroupPlan(0.5, "nm", (1, 4))})
    half = plan.scaled(0.5)
    assert half.groups["c"].ratio == pytest.approx(0.3)
    assert half.groups["n"].nm == (3, 4)               # 4:4 -> 3:4 -> 2:4 -> 1:4
    assert plan.scaled(0.2).groups["n"].ratio == 0.0    # still dense (4 of 4 kept)
    assert plan.scaled(1.0) == plan


def test_unstructured_layer_wise_is_exact_per_layer(model, example):
    engine = _engine(model, example)
    groups = {g.name: g for g in engine.groups(model)}
    plan = PrunePlan.uniform(groups, 0.3, pattern="unstructured")
    before = {n: p.numel() for n, p in model.named_parameters()}
    result = engine.apply(model, plan)
    modules = dict(model.named_modules())
    layers = [layer for g in groups.values() for layer in g.layers]
    assert sorted(result.masks.masks) == sorted(layers)
    for layer in layers:
        w = modules[layer].weight
        assert _zeros(w) == round(0.3 * w.numel()), layer
    assert _zeros(model.fc.weight) == 0                                    # the output layer stays dense
    assert {n: p.numel() for n, p in model.named_parameters()} == before   # nothing removed


def test_global_unstructured_is_exact_in_total_and_uneven_per_layer(model, example):
    engine = _engine(model, example, scope="global")
    groups = engine.groups(model)
    with torch.no_grad():
        model.stem[0].weight.mul_(100.0)   # a large-scale layer: a global ranking spares it
    engine.apply(model, PrunePlan.uniform([g.name for g in groups], 0.5, pattern="unstructured"))
    modules = dict(model.named_modules())
    layers = [modules[layer].weight for g in groups for layer in g.layers]
    assert sum(_zeros(w) for w in layers) == sum(round(0.5 * w.numel()) for w in layers)
    assert _zeros(model.stem[0].weight) == 0


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_nm_keeps_exactly_n_of_every_m_and_skips_layers_it_cannot_tile(model, example):
    engine = _engine(model, example)
    groups = {g.name: g for g in engine.groups(model)}
    logger, records = logging.getLogger("autoprune"), _Records()
    logger.addHandler(records)
    # another test's logging.config.dictConfig (a library's, disable_existing_loggers) may have disabled it
    level, disabled, logger.disabled = logger.level, logger.disabled, False
    logger.setLevel(logging.INFO)   # not `logger.level = ...`: setLevel clears the logger's isEnabledFor cache
    try:
        result = engine.apply(model, PrunePlan.uniform(groups, 0.5, pattern="nm", nm=(1, 4)))
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        logger.disabled = disabled
    # the stem conv has one input channel: 1:4 cannot tile it, it stays dense with a logged reason
    assert "stem.0" in result.skipped and "divisible by 4" in result.skipped["stem.0"]
    assert any("stem.0" in line and "exclude it" in line for line in records.lines)
    assert _zeros(model.stem[0].weight) == 0
    w = model.layers[1][0].conv1.weight                                    # [64, 32, 3, 3]
    runs = w.movedim(1, -1).reshape(64, 3, 3, 8, 4)
    assert torch.equal((runs != 0).sum(-1), torch.ones(64, 3, 3, 8, dtype=torch.long))


def test_block_zeroes_whole_blocks_exactly(model, example):
    engine = _engine(model, example)
    groups = {g.name: g for g in engine.groups(model)}
    engine.apply(model, PrunePlan({"layers.2.0.conv1": GroupPlan(0.5, "block", block=(4, 4))}))
    w = model.layers[2][0].conv1.weight                                    # [128, 64*9]
    tiles = w.reshape(32, 4, 144, 4)
    dead = (tiles == 0).all(dim=(1, 3))
    assert int(dead.sum()) == round(0.5 * 32 * 144)
    assert _zeros(w) == 16 * int(dead.sum())
    assert _zeros(model.layers[1][0].conv1.weight) == 0                    # other groups untouched
    assert groups["layers.2.0.conv1"].layers == ("layers.2.0.conv1",)


def test_mixed_plan_removes_channels_then_masks_the_narrowed_layers(model, example):
    engine = _engine(model, example)
    plan = PrunePlan({"stem.0": GroupPlan(0.5), "layers.1.0.conv1": GroupPlan(0.5, "unstructured")})
    result = engine.apply(model, plan)
    assert model.stem[0].out_channels == kept_channels(32, 0.5, 8) == 16
    w = model.layers[1][0].conv1.weight
    assert tuple(w.shape) == (64, 16, 3, 3)                                # narrowed by the stem's group first
    assert _zeros(w) == round(0.5 * w.numel())
    assert result.removed["stem.0"] and len(result.removed["stem.0"]) == 16
    assert model(example).shape == (1, 10)


def test_channel_only_criteria_are_rejected_for_masks(model, example):
    engine = _engine(model, example)
    with pytest.raises(ConfigError, match="bn_scale.*scores whole channels"):
        engine.apply(model, PrunePlan({"stem.0": GroupPlan(0.5, "unstructured")}, "bn_scale"))


def test_trial_keeps_masks_through_finetuning_and_reports_what_sparsity_buys(make_cfg, tmp_path):
    from autoprune.context import build_context

    ctx = build_context(make_cfg("prune.pattern=unstructured", "recover.epochs=2"))
    assert ctx.space.patterns == ("unstructured",)
    names = [g.name for g in ctx.groups]
    result = ctx.evaluator.evaluate(PrunePlan.uniform(names, 0.6, pattern="unstructured"), tmp_path / "u")
    model = ctx.evaluator.rebuild(result.plan, result.model_path)
    modules = dict(model.named_modules())
    layers = [layer for g in ctx.groups for layer in g.layers]
    for layer in layers:  # fine-tuned for 2 epochs, and the zeros are all still there
        w = modules[layer].weight
        assert _zeros(w) >= round(0.6 * w.numel()), layer
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(result.onnx_path)).graph.initializer}
    onnx_zeros = sum(int((a == 0).sum()) for a in initializers.values() if a.ndim >= 2)
    assert onnx_zeros >= sum(round(0.6 * modules[layer].weight.numel()) for layer in layers)
    metrics = result.metrics()
    assert 0.5 < metrics["weight_sparsity"] < 0.6          # the dense output layer dilutes it a little
    assert metrics["sparse_bytes"] < 0.75 * result.dense_bytes
    assert result.dense_bytes == 4 * result.params          # zeros save nothing in the dense tensors

    channel = ctx.evaluator.evaluate(PrunePlan.uniform(names, 0.5), tmp_path / "c")
    assert channel.metrics()["weight_sparsity"] == 0.0
    assert channel.sparse_bytes == channel.dense_bytes      # dense weights: the dense encoding is the best
    assert channel.params < result.params


def test_space_offers_patterns_per_layer_type_and_per_group():
    from autoprune.prune.channels import PrunableGroup

    groups = [PrunableGroup("features.0", 8, (), ("features.0",), "conv"),
              PrunableGroup("features.1", 48, (), ("features.1",), "depthwise"),
              PrunableGroup("classifier.0", 64, (), ("classifier.0",), "linear")]
    space = build_space({"patterns": {"default": ["channel", "nm"], "depthwise": ["channel"],
                                      "linear": ["channel", "unstructured"]},
                         "per_group": {"features.0": {"patterns": ["block"], "high": 0.5}},
                         "nm": [1, 4], "block": [4, 4]}, groups)
    dims = {d.name: d for d in space.dimensions}
    assert dims["features.0"].patterns == ("block",) and dims["features.0"].range.high == 0.5
    assert dims["features.1"].patterns == ("channel",)
    assert dims["classifier.0"].patterns == ("channel", "unstructured")
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    plan = space.suggest(trial)
    assert set(trial.params) == {"ratio.features.0", "ratio.features.1", "ratio.classifier.0",
                                 "pattern.classifier.0"}
    assert plan.groups["features.0"].pattern == "block" and plan.groups["features.0"].block == (4, 4)
    target = PrunePlan({"features.0": GroupPlan(0.25, "block", nm=(1, 4), block=(4, 4)),
                        "features.1": GroupPlan(0.5, "channel", nm=(1, 4), block=(4, 4)),
                        "classifier.0": GroupPlan(0.75, "unstructured", nm=(1, 4), block=(4, 4))})
    study.enqueue_trial(space.encode(target))
    assert space.suggest(study.ask()) == target
    assert "patterns" in space.describe()


def test_space_defaults_stay_channel_only_and_reject_bad_patterns():
    groups = ["a", "b"]
    default = build_space({}, groups)
    assert all(d.patterns == ("channel",) for d in default.dimensions)
    assert "patterns" not in default.describe()             # old study names (digests) stay the same
    assert build_space({}, groups, defaults={"pattern": "nm"}).patterns == ("nm",)
    for data, message in [({"patterns": ["holes"]}, "unknown pattern"),
                          ({"patterns": {"transformer": ["channel"]}}, "unknown layer type"),
                          ({"patterns": ["unstructured"], "importance": ["l2", "fpgm"]}, "scores whole channels"),
                          ({"nm": [4, 4]}, "1 <= N < M"),
                          ({"tie": {"t": ["a", "b"]}, "per_group": {"a": {"patterns": ["nm"]}}}, "pattern choices")]:
        with pytest.raises(ConfigError, match=message):
            build_space(data, groups)


# (factory, input shape, pattern, options): every zoo model through mask pruning -> ONNX -> ORT
ZOO = {
    "resnet18": (zoo.resnet18, (1, 3, 32, 32), "nm", {}),
    "vgg11_bn": (zoo.vgg11_bn, (1, 3, 32, 32), "block", {"block": (4, 4)}),
    "vgg16_bn": (zoo.vgg16_bn, (1, 3, 32, 32), "unstructured", {}),
    "mobilenet_v2": (lambda: zoo.mobilenet_v2(width_mult=0.25), (1, 3, 32, 32), "nm", {}),
    "cnn1d": (zoo.cnn1d, (1, 1, 40), "block", {}),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_survives_mask_pruning_export_and_onnxruntime(name, tmp_path):
    factory, shape, pattern, options = ZOO[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    engine = _engine(model, x)
    groups = engine.groups(model)
    result = engine.apply(model, PrunePlan.uniform([g.name for g in groups], 0.5, pattern=pattern, **options))
    assert len(result.masks) >= 2
    masked = sum(int((~keep).sum()) for _, keep in result.masks.masks.values())
    assert masked == sum(_zeros(m.weight) for m, _ in result.masks.masks.values()) > 0
    with torch.no_grad():
        out = model(x)
    path = export_onnx(model, x, tmp_path / f"{name}.onnx")
    initializers = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]
    assert sum(int((a == 0).sum()) for a in initializers if a.ndim >= 2) >= masked
    (ort_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert ort_out.shape == out.shape == (1, 10)
    np.testing.assert_allclose(ort_out, out.numpy(), rtol=1e-3, atol=1e-4)
    if name == "mobilenet_v2":   # depthwise convs cannot take 2:4 (one input per filter): left dense, said so
        assert any("features.2.conv.1.0" == layer for layer in result.skipped)


def test_layer_that_cannot_be_pruned_safely_is_named(example):
    class HardCodedReshape(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, 3)

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
            return self.fc(x.reshape(x.shape[0], 16 * 16))   # the channel count is baked in

    from autoprune.errors import PruningError

    model = HardCodedReshape().eval()
    pruner = ChannelPruner(example, output_layers(model, example), 1)
    with pytest.raises(PruningError, match=r"group\(s\) \['conv'\] the model no longer runs.*exclude"):
        pruner.apply(model, PrunePlan({"conv": GroupPlan(0.5)}))
