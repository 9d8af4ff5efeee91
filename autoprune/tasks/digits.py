"""scikit-learn's handwritten digits (1,797 real 8x8 images, shipped with scikit-learn), upsampled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from autoprune.tasks.data import DataSplits, Preprocessing, stratified_splits


def load(size: int = 32, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Fixed stratified train/val/test splits of `load_digits`, images resized to size x size in [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target, dtype=torch.long)
    # resizing is linear, so dividing by 16 before or after it is the same: raw = grey levels 0-16 at size x size
    raw = (f"grey levels 0-16 of an 8x8 load_digits image (0: no ink), resized bilinearly to {size}x{size}: "
           f"float32 [N, 1, {size}, {size}]")
    return stratified_splits(x, y, val_fraction, test_fraction, seed, Preprocessing(raw, 16.0, (0.5,), (0.5,)))
