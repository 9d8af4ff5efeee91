"""User-style factories for tests: a plain function returning a model, and a data factory."""

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset


def tiny_cnn(num_classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def blobs(n: int = 60, size: int = 8, seed: int = 0):
    """Three classes of noisy images whose mean brightness encodes the label; (train, val, test) tuple."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3 * n) % 3
    x = torch.randn(3 * n, 1, size, size, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
    part = lambda s: TensorDataset(x[s], y[s])  # noqa: E731
    return part(slice(0, n)), part(slice(n, 2 * n)), part(slice(2 * n, 3 * n))
