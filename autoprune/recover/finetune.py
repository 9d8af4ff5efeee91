"""Supervised training / fine-tuning and accuracy evaluation on a Dataset of (input, label) pairs.

`train` is plain SGD fine-tuning (the baseline's training too). `finetune` is the same loop with what
recovery after pruning needs: masks kept after every optimizer step, knowledge distillation from a
teacher, a regularisation penalty, gradient statistics for gradient criteria, and *events*: callbacks
at given optimizer steps that prune further (gradual schedules). An event that changes the model's
parameters (channels removed) gets a fresh optimizer (momentum restarts); the learning-rate schedule
keeps its position.

Every optimizer step runs inside `autoprune.hw.lock.compute_share()`: with AUTOPRUNE_PAUSE_TRAINING=1 it
waits while a search on this machine times a model, so this worker's training does not load the cores or
memory a measurement runs on (off by default; see autoprune/hw/lock.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Sized, cast

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import AutopruneError
from autoprune.hw.lock import compute_share, pausing_training
from autoprune.schema import build, check, setting


@dataclass(frozen=True)
class TrainConfig:
    """SGD training settings (`task.train`, and the flat keys of `recover`); each field's range is
    declared here once (autoprune.schema) and checked wherever the settings come from."""

    epochs: int = setting(3, ge=0)
    lr: float = setting(0.02, gt=0, want="a learning rate > 0")
    batch_size: int = setting(64, ge=1)
    momentum: float = setting(0.9, ge=0, lt=1)
    weight_decay: float = setting(5e-4, ge=0)
    seed: int = 0

    def __post_init__(self) -> None:
        check(self)

    @classmethod
    def checked(cls, section: str, **values) -> "TrainConfig":
        """Build from a config section, naming it in errors (`recover.lr=-1 must be ...`)."""
        return build(cls, values, section)


class DivergedError(AutopruneError):
    """The loss became NaN/inf during training."""


# An event: at optimizer step `step` (0-based, before that step), call `fn(model)`; it returns True when it
# replaced parameters (the optimizer is then rebuilt).
Event = tuple[int, Callable[[nn.Module], bool]]


def train(model: nn.Module, data: Dataset, config: TrainConfig,
          on_epoch: Optional[Callable[[int, nn.Module], None]] = None) -> nn.Module:
    """SGD with momentum and a cosine learning-rate schedule; `on_epoch(epoch, model)` after each epoch."""
    return finetune(model, data, config, on_epoch=on_epoch)


def steps_per_epoch(data: Dataset, config: TrainConfig) -> int:
    return math.ceil(len(cast(Sized, data)) / config.batch_size)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=True)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean."""
    t = float(temperature)
    return nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=1),
                                nn.functional.log_softmax(teacher / t, dim=1),
                                reduction="batchmean", log_target=True) * t * t


def finetune(model: nn.Module, data: Dataset, config: TrainConfig, *,
             on_epoch: Optional[Callable[[int, nn.Module], None]] = None,
             masks=None,
             teacher: Optional[nn.Module] = None, kd_temperature: float = 4.0, kd_alpha: float = 0.5,
             penalty: Optional[Callable[[nn.Module], torch.Tensor]] = None,
             grad_hook: Optional[Callable[[nn.Module], None]] = None,
             events: Sequence[Event] = (),
             epochs: Optional[int] = None) -> nn.Module:
    """SGD (momentum, Nesterov, cosine learning rate) with the recovery extras:

    masks        a MaskSet (autoprune.prune.engine) re-applied after every optimizer step
    teacher      loss = (1 - kd_alpha) * CE + kd_alpha * distillation_loss(student, teacher, kd_temperature)
    penalty      a regulariser added to the loss (e.g. L1 on BatchNorm scales)
    grad_hook    called after each backward pass (gradient statistics for taylor / hessian / movement)
    events       (step, fn) pairs: fn(model) runs before optimizer step `step`; events at or past the last
                 step run after training
    epochs       overrides config.epochs
    """
    epochs = config.epochs if epochs is None else int(epochs)
    pending = sorted(events, key=lambda e: e[0])
    if epochs <= 0:
        for _, fn in pending:
            fn(model)
        model.eval()
        return model
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = _optimizer(model, config)
    steps = epochs * len(loader)
    lr_at = lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    loss_fn = nn.CrossEntropyLoss()
    pause = pausing_training()   # read once: AUTOPRUNE_PAUSE_TRAINING does not change during a fine-tune
    if teacher is not None:
        teacher.eval()
    step = 0
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            rebuilt = False
            while pending and pending[0][0] <= step:
                rebuilt |= bool(pending.pop(0)[1](model))
                model.train()
            if rebuilt:  # new parameter tensors: new optimizer, same place on the learning-rate curve
                optimizer = _optimizer(model, config)
                schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lambda base, s: lr_at(s + base), step))
            with compute_share(pause):   # AUTOPRUNE_PAUSE_TRAINING=1: paused while a model is timed
                logits = model(x)
                loss = loss_fn(logits, y)
                if teacher is not None and kd_alpha > 0:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = (1 - kd_alpha) * loss + kd_alpha * distillation_loss(logits, target, kd_temperature)
                if penalty is not None:
                    loss = loss + penalty(model)
                if not torch.isfinite(loss):
                    raise DivergedError(f"training loss became {loss.item()} in epoch {epoch}: lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_hook is not None:
                    grad_hook(model)
                optimizer.step()
                schedule.step()
                if masks is not None:
                    masks.apply()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch, model)
    for _, fn in pending:  # events scheduled at (or past) the end
        fn(model)
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


@torch.no_grad()
def logits_of(model: nn.Module, data: Dataset, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x) for x, _ in DataLoader(data, batch_size=batch_size)])


def evaluate(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy in [0, 1]."""
    preds, labels = predict(model, data)
    return float((preds == labels).float().mean())
