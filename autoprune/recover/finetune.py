"""Supervised training / fine-tuning and accuracy evaluation on a Dataset of (input, label) pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    lr: float = 0.02
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


class DivergedError(AutopruneError):
    """The loss became NaN/inf during training."""


def train(model: nn.Module, data: Dataset, config: TrainConfig,
          on_epoch: Optional[Callable[[int, nn.Module], None]] = None) -> nn.Module:
    """SGD with momentum and a cosine learning-rate schedule; `on_epoch(epoch, model)` after each epoch."""
    if config.epochs <= 0:
        return model
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    steps = config.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(config.epochs):
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise DivergedError(f"training loss became {loss.item()} in epoch {epoch}: lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    preds, labels = [], []
    for x, y in DataLoader(data, batch_size=batch_size):
        preds.append(model(x).argmax(dim=1))
        labels.append(torch.as_tensor(y))
    return torch.cat(preds), torch.cat(labels)


def evaluate(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy in [0, 1]."""
    preds, labels = predict(model, data)
    return float((preds == labels).float().mean())
