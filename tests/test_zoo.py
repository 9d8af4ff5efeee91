"""Every zoo model survives the real pipeline: channel-prune at 0.5 -> forward -> ONNX export -> ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from autoprune.hw import export_onnx
from autoprune.plan import PrunePlan
from autoprune.prune import ChannelPruner, output_layers
from autoprune.tasks import zoo

IMAGE = (1, 3, 32, 32)


def _layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


# (factory, input shape, one layer and its exact out_channels after a 0.5 plan with round_to=8)
CASES = {
    "resnet18": (zoo.resnet18, IMAGE, "stem.0", 64, 32),
    "vgg11_bn": (zoo.vgg11_bn, IMAGE, "classifier.0", 512, 256),
    "vgg16_bn": (zoo.vgg16_bn, IMAGE, "features.0", 64, 32),
    # width 0.25: block 2 expands 8 -> 48 channels, 0.5 of 48 -> 24
    "mobilenet_v2": (lambda: zoo.mobilenet_v2(width_mult=0.25), IMAGE, "features.2.conv.0.0", 48, 24),
    "cnn1d": (zoo.cnn1d, (1, 1, 40), "3", 64, 32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_model_prunes_exports_and_runs_on_onnxruntime(name, tmp_path):
    factory, shape, layer, before, after = CASES[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    n_params = sum(p.numel() for p in model.parameters())
    assert _width(_layer(model, layer)) == before

    pruner = ChannelPruner(x, output_layers(model, x), round_to=8)
    groups = pruner.groups(model)
    assert len(groups) >= 3
    pruner.apply(model, PrunePlan.uniform([g.name for g in groups], 0.5))

    assert _width(_layer(model, layer)) == after
    assert sum(p.numel() for p in model.parameters()) < n_params
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 10)

    path = export_onnx(model, x, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": x.numpy()})
    assert ort_out.shape == (1, 10)
    np.testing.assert_allclose(ort_out, out.numpy(), rtol=1e-3, atol=1e-4)


def test_mobilenet_depthwise_convs_stay_depthwise_after_pruning():
    torch.manual_seed(0)
    model = zoo.mobilenet_v2(width_mult=0.25).eval()
    x = torch.randn(*IMAGE)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17  # one per inverted residual block
    pruner = ChannelPruner(x, output_layers(model, x), round_to=8)
    pruner.apply(model, PrunePlan.uniform([g.name for g in pruner.groups(model)], 0.5))
    widths = []
    for name in depthwise:
        conv = _layer(model, name)
        assert conv.groups == conv.in_channels == conv.out_channels, name
        assert conv.weight.shape == (conv.out_channels, 1, 3, 3), name
        widths.append(conv.out_channels)
    assert _layer(model, "features.2.conv.1.0").out_channels == 24  # pruned together with its expand conv
    assert sum(widths) < sum(_layer(zoo.mobilenet_v2(width_mult=0.25), n).out_channels for n in depthwise)


def test_factories_honour_classes_channels_and_width():
    x = torch.randn(2, 1, 32, 32)
    for factory in (zoo.resnet18, zoo.vgg11_bn, zoo.vgg16_bn, zoo.mobilenet_v2):
        assert factory(num_classes=7, in_channels=1).eval()(x).shape == (2, 7)
    resnet = zoo.resnet18()
    assert [stage[0].conv1.out_channels for stage in resnet.layers] == [64, 128, 256, 512]
    assert [len(stage) for stage in resnet.layers] == [2, 2, 2, 2]
    assert resnet.stem[0].stride == (1, 1) and resnet.stem[0].kernel_size == (3, 3)
    assert sum(isinstance(m, nn.Conv2d) for m in zoo.vgg11_bn().modules()) == 8
    assert sum(isinstance(m, nn.Conv2d) for m in zoo.vgg16_bn().modules()) == 13
    assert zoo.mobilenet_v2(width_mult=0.5).features[0][0].out_channels == 16
    assert zoo.mobilenet_v2(width_mult=1.0).features[0][0].out_channels == 32
    assert zoo.cnn1d(num_classes=4, widths=(8, 16)).eval()(torch.randn(3, 1, 40)).shape == (3, 4)
