"""Small models that the pre-flight must catch (tests/test_preflight.py, tests/test_bad_input.py)."""

from __future__ import annotations

import time

import torch
import torch.nn as nn


class FixedReshape(nn.Module):
    """Two conv groups; the second feeds a reshape with hard-coded sizes, which breaks once that group
    loses channels (torch-pruning narrows the Linear but cannot rewrite the constant)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, size: int = 16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.flat = width * 16
        self.fc = nn.Linear(self.flat, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).reshape(x.shape[0], self.flat))


class OnlyFixedReshape(nn.Module):
    """One conv group, and that one cannot be pruned (hard-coded reshape): nothing to search."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = width * 4
        self.fc = nn.Linear(self.flat, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).reshape(x.shape[0], self.flat))


class Stuck(nn.Module):
    """Never returns while autograd records (as during torch-pruning's trace); instant otherwise."""

    def forward(self, x):
        while torch.is_grad_enabled():
            time.sleep(0.01)
        return x


class Greedy(nn.Module):
    """Allocates without end while autograd records (a trace that explodes); instant otherwise."""

    def forward(self, x):
        hoard = []
        while torch.is_grad_enabled():
            hoard.append(torch.ones(64, 1024, 1024))  # 256 MiB each
        return x


class _Net(nn.Module):
    def __init__(self, inner: nn.Module, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.inner = inner
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.inner(self.conv(x))).flatten(1))


def stuck_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Net(Stuck(), num_classes, in_channels)


def greedy_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Net(Greedy(), num_classes, in_channels)
