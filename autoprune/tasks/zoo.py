"""A small model zoo for CIFAR-sized images and 1-D signals (own code: torchvision is not a dependency).

Every factory returns a fresh, randomly initialised model in train mode:

    resnet18(num_classes=10, in_channels=3)                     # 11.2 M params, input [B, C, 32, 32]
    vgg11_bn(num_classes=10, in_channels=3)                     #  9.5 M params, input [B, C, 32, 32]
    vgg16_bn(num_classes=10, in_channels=3)                     # 15.0 M params, input [B, C, 32, 32]
    mobilenet_v2(num_classes=10, in_channels=3, width_mult=1.0) #  2.2 M params, input [B, C, 32, 32]
    cnn1d(num_classes=10, in_channels=1, widths=(32, 64, 128))  #  ~53 k params, input [B, C, L], e.g. L=40

All are plain conv / BatchNorm / linear stacks that torch-pruning can trace, so ChannelPruner can
prune every one of them and the pruned model exports to ONNX.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from autoprune.errors import ConfigError
from autoprune.tasks.models import BasicBlock, ResNet

__all__ = ["BasicBlock", "ResNet", "resnet18", "VGG", "vgg11_bn", "vgg16_bn", "InvertedResidual", "MobileNetV2",
           "mobilenet_v2", "cnn1d"]


# ----------------------------------------------------------------------------------------- ResNet-18

def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-18: 3x3 stride-1 stem (no max-pool), stages 64/128/256/512 of two BasicBlocks each.

    [B, C, 32, 32] -> stem [B, 64, 32, 32] -> [B, 128, 16, 16] -> [B, 256, 8, 8] -> [B, 512, 4, 4] -> [B, classes]"""
    return ResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes, in_channels)


# ---------------------------------------------------------------------------------------------- VGG

VGG_CONFIGS: dict[str, list[Union[int, str]]] = {  # conv widths; "M" is a 2x2 max-pool
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm: 3x3 conv-BN-ReLU stack with five max-pools, then a small classifier.

    [B, C, 32, 32] -> features [B, 512, 1, 1] -> pool/flatten [B, 512] -> classifier [B, classes]"""

    def __init__(self, config: Sequence[Union[int, str]], num_classes: int = 10, in_channels: int = 3,
                 hidden: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))  # halves H and W
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1x1 already for 32x32 inputs; lets larger inputs work too
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W] -> logits [B, num_classes]
        x = self.pool(self.features(x))  # [B, 512, 1, 1]
        return self.classifier(torch.flatten(x, 1))


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with BatchNorm (8 conv layers), CIFAR-style classifier 512 -> 512 -> classes."""
    return VGG(VGG_CONFIGS["vgg11"], num_classes, in_channels)


def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 with BatchNorm (13 conv layers), CIFAR-style classifier 512 -> 512 -> classes."""
    return VGG(VGG_CONFIGS["vgg16"], num_classes, in_channels)


# -------------------------------------------------------------------------------------- MobileNetV2

def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of `divisor` without going more than 10 % below it (as in the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (x`expand`) -> 3x3 depthwise (stride) -> 1x1 linear projection; residual when shapes match.

    [B, c_in, H, W] -> [B, c_in*expand, H, W] -> [B, c_in*expand, H/s, W/s] -> [B, c_out, H/s, W/s]"""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [_conv_bn_relu6(c_in, hidden)] if expand != 1 else []  # no expansion in the first block
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),   # depthwise: one filter per channel
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),  # linear bottleneck (no ReLU)
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: stride-1 stem and stride 1 in the second stage, so 32x32 inputs end at 4x4.

    [B, C, 32, 32] -> stem [B, 32w, 32, 32] -> blocks [B, 320w, 4, 4] -> 1x1 conv [B, 1280, 4, 4] -> [B, classes]"""

    # (expansion t, output channels c, repeats n, first stride s), per the paper; stage 2 stride 2 -> 1 for CIFAR
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        c_in = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))  # the head stays 1280 wide for width_mult < 1
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, c_in, 3, 1)]  # stride-1 stem
        for t, c, n, s in self.SETTINGS:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        layers.append(_conv_bn_relu6(c_in, last))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W] -> logits [B, num_classes]
        x = self.pool(self.features(x))  # [B, 1280, 1, 1]
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> MobileNetV2:
    """CIFAR MobileNetV2; `width_mult` scales every width (rounded to multiples of 8) except the 1280 head."""
    if width_mult <= 0:
        raise ConfigError(f"mobilenet_v2 width_mult={width_mult} must be > 0: use e.g. 1.0 or 0.5")
    return MobileNetV2(num_classes, in_channels, width_mult)


# -------------------------------------------------------------------------------------- 1-D CNN

def cnn1d(num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128)) -> nn.Sequential:
    """A small 1-D CNN for signals such as MNIST-1D: conv-BN-ReLU stages (stride 2 after the first),
    global average pool, linear head.

    [B, C, 40] -> [B, 32, 40] -> [B, 64, 20] -> [B, 128, 10] -> pool [B, 128, 1] -> flatten [B, 128] -> [B, classes]"""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, width in enumerate(widths):
        layers += [nn.Conv1d(c_in, width, 5, stride=1 if i == 0 else 2, padding=2, bias=False),
                   nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
