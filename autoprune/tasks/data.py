"""The data contract between a task's data factory and the rest of autoprune."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from autoprune.errors import ConfigError


@dataclass(frozen=True)
class DataSplits:
    """Fixed train / val / test splits. Each item of each split is `(input_tensor, int_label)`.

    Selection (search) uses `val`; `test` is only used once for the final Pareto models."""

    train: Dataset
    val: Dataset
    test: Dataset

    @classmethod
    def coerce(cls, value, factory: str) -> "DataSplits":
        """Accept a DataSplits or any (train, val, test) triple from a user's data factory."""
        if isinstance(value, DataSplits):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(*value)
        raise ConfigError(f"data factory {factory} returned {type(value).__name__}: "
                          "return autoprune.DataSplits(train, val, test) or a (train, val, test) tuple")

    def example_batch(self, batch_size: int) -> torch.Tensor:
        """The first `batch_size` training inputs stacked: real data with the right shape and dtype
        (float images, int64 token ids...), used for tracing, export and timing."""
        items = [self.train[i % len(self.train)][0] for i in range(batch_size)]
        if not all(isinstance(x, torch.Tensor) for x in items):
            raise ConfigError("data items must be (tensor, label) pairs: convert inputs with torch.as_tensor")
        return torch.stack(items)


def stratified_splits(x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float,
                      seed: int) -> DataSplits:
    """Fixed, class-stratified train / val / test splits of in-memory tensors (same seed, same splits)."""
    labels = y.numpy()
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
    part = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    return DataSplits(part(train), part(val), part(test))
