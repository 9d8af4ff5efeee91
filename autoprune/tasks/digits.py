"""scikit-learn's handwritten digits (1,797 real 8x8 images, shipped with scikit-learn), upsampled."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from autoprune.tasks.data import DataSplits


def load(size: int = 32, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Fixed stratified train/val/test splits of `load_digits`, images resized to size x size in [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target, dtype=torch.long)
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=y[rest], random_state=seed
    )
    part = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    return DataSplits(part(train), part(val), part(test))
