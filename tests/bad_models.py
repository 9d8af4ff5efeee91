"""Models autoprune must refuse before it trains a baseline (tests/test_bad_input.py).

Importable as `bad_models.<Name>` when tests/ is on PYTHONPATH, the way a user points
`task.model._target_` at their own module.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class MedianPool(nn.Module):
    """Median pooling of each channel (robust to outlier activations): a real layer that neither ONNX
    exporter handles (`aten::kthvalue` has no ONNX form in the TorchScript exporter nor in torch's dynamo
    one), so it could never be timed."""

    def __init__(self, size: int = 4):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        median = flat.kthvalue(max(1, flat.shape[-1] // 2), dim=-1).values
        return median.unsqueeze(-1).expand(*median.shape, self.size * self.size)


class MedianNet(nn.Module):
    """conv -> BN -> ReLU -> MedianPool -> linear; takes the digits task's model arguments."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(8,), blocks=(1,)):
        super().__init__()
        width = int(widths[0])
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = MedianPool(4)
        self.fc = nn.Linear(width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
