"""The data contract between a task's data factory and the rest of autoprune."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sized, cast

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from autoprune.errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """How a raw input becomes what the model takes, as the task defines it (recorded with a deployed model):
    `model_input = (raw / scale - mean) / std`, mean and std per channel (dimension 1 of a batch).
    `mean` None: the raw input is passed as it is (token ids, signals the data set already standardises)."""

    raw: str                                  # what a raw input is, in words
    scale: float = 1.0
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None) or (self.mean is not None and len(self.mean) != len(self.std or ())):
            raise ConfigError(f"Preprocessing({self.raw!r}): give mean and std together, one value per channel each "
                              f"(got mean={self.mean}, std={self.std})")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """A batch of raw inputs [N, C, ...] as the model takes them (float32); unchanged when `mean` is None."""
        raw = np.asarray(raw)
        if self.mean is None:
            return raw
        shape = (1, len(self.mean)) + (1,) * (raw.ndim - 2)
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        return ((raw.astype(np.float32) / np.float32(self.scale) - mean) / std).astype(np.float32)

    def formula(self) -> str:
        if self.mean is None:
            return "model input = raw input (no normalisation)"
        return f"model input = (raw / {self.scale:g} - mean {list(self.mean)}) / std {list(self.std or ())}, per channel"

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DataSplits:
    """Fixed train / val / test splits. Each item of each split is `(input_tensor, int_label)`.

    Selection (search) uses `val`; `test` is only used once for the final Pareto models. `preprocessing`
    (optional) says how a raw input becomes an item's input tensor: `pick` records it with the model."""

    train: Dataset
    val: Dataset
    test: Dataset
    preprocessing: Optional[Preprocessing] = None

    @classmethod
    def coerce(cls, value, factory: str) -> "DataSplits":
        """Accept a DataSplits or any (train, val, test) triple from a user's data factory."""
        if isinstance(value, DataSplits):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(*value)
        raise ConfigError(f"data factory {factory} returned {type(value).__name__}: "
                          "return autoprune.DataSplits(train, val, test) or a (train, val, test) tuple")

    def val_inputs(self, n: int) -> torch.Tensor:
        """The first `n` validation inputs stacked (real data: a logged model's input example)."""
        return torch.stack([self.val[i][0] for i in range(min(n, len(cast(Sized, self.val))))])

    def example_batch(self, batch_size: int) -> torch.Tensor:
        """The first `batch_size` training inputs stacked: real data with the right shape and dtype
        (float images, int64 token ids...), used for tracing, export and timing."""
        items = [self.train[i % len(cast(Sized, self.train))][0] for i in range(batch_size)]
        if not all(isinstance(x, torch.Tensor) for x in items):
            raise ConfigError("data items must be (tensor, label) pairs: convert inputs with torch.as_tensor")
        return torch.stack(items)


def stratified_splits(x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float,
                      seed: int, preprocessing: Optional[Preprocessing] = None) -> DataSplits:
    """Fixed, class-stratified train / val / test splits of in-memory tensors (same seed, same splits)."""
    labels = y.numpy()
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
    part = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    return DataSplits(part(train), part(val), part(test), preprocessing)
