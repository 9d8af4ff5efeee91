"""Models autoprune must refuse before it trains a baseline (tests/test_bad_input.py).

Importable as `bad_models.<Name>` when tests/ is on PYTHONPATH, the way a user points
`task.model._target_` at their own module.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SpectralPool(nn.Module):
    """Magnitudes of the lowest 2-D frequencies: a real layer (spectral pooling) that the ONNX exporter
    cannot handle (`aten::fft_rfft2` has no ONNX opset 17 export), so it could never be timed."""

    def __init__(self, size: int = 4):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x).abs()[..., : self.size, : self.size]


class SpectralNet(nn.Module):
    """conv -> BN -> ReLU -> SpectralPool -> linear; takes the digits task's model arguments."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(8,), blocks=(1,)):
        super().__init__()
        width = int(widths[0])
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = SpectralPool(4)
        self.fc = nn.Linear(width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
