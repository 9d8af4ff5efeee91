"""Per-weight saliency for every importance criterion, and the gradient statistics some of them need.

    criterion  per-weight score s(w)                       needs
    l1         |w|                                          weights
    l2         w^2        (sums to the squared L2 norm)     weights
    taylor     |w * mean g|     first-order Taylor (Molchanov et al. 2019)            gradients
    hessian    0.5 * w^2 * mean(g^2)   OBD with the empirical-Fisher Hessian diagonal  gradients
    movement   -w * sum g    movement pruning (Sanh et al. 2020): weights moving       gradients
               towards zero score low; accumulated over fine-tuning steps in gradual schedules
    random     uniform noise (seeded through torch's RNG): the control

bn_scale and fpgm score whole channels (BatchNorm |gamma|, distance to the geometric median), not
single weights: they exist for the channel pattern only.

Gradient statistics come from `collect_gradients` (a few calibration batches, the model in eval mode
so BatchNorm statistics are not touched) or, during fine-tuning, from `GradientStats.accumulate` after
each backward pass. They are keyed by parameter name: a structural change (channels removed) makes
them stale, and `GradientStats.reset` starts them again.
"""

from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import ConfigError

from autoprune.prune.criteria import CHANNEL_ONLY, GRADIENT_CRITERIA, WEIGHT_CRITERIA, needs_gradients  # noqa: F401


class GradientStats:
    """Running sums of gradients (sum g, sum g^2, count) per parameter name."""

    def __init__(self) -> None:
        self.sum: dict[str, torch.Tensor] = {}
        self.sq: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def reset(self) -> None:
        self.sum.clear()
        self.sq.clear()
        self.count.clear()

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        """Add the current `.grad` of every parameter (call after backward, before the optimizer step)."""
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.detach()
            if name in self.sum and self.sum[name].shape != g.shape:  # channels were removed: start again
                del self.sum[name], self.sq[name], self.count[name]
            if name not in self.sum:
                self.sum[name] = torch.zeros_like(g)
                self.sq[name] = torch.zeros_like(g)
                self.count[name] = 0
            self.sum[name] += g
            self.sq[name] += g * g
            self.count[name] += 1

    def __len__(self) -> int:
        return len(self.sum)


def collect_gradients(model: nn.Module, data: Dataset, n_batches: int = 4, batch_size: int = 64,
                      seed: int = 0, stats: Optional[GradientStats] = None) -> GradientStats:
    """Gradients of the cross-entropy loss over `n_batches` training batches (a fixed, seeded draw), with
    the model in eval mode (dropout off, BatchNorm statistics untouched); the model's `.grad`s are
    cleared afterwards."""
    stats = stats if stats is not None else GradientStats()
    if n_batches < 1:
        raise ConfigError(f"prune.calibration_batches={n_batches} must be >= 1 for gradient criteria")
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    try:
        for i, (x, y) in enumerate(loader):
            if i >= n_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), torch.as_tensor(y)).backward()
            stats.accumulate(model)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return stats


def _stat(stats: Optional[GradientStats], table: str, name: str, weight: torch.Tensor, criterion: str) -> torch.Tensor:
    if stats is None or name not in stats.sum or stats.sum[name].shape != weight.shape:
        raise ConfigError(f"importance '{criterion}' needs gradients of '{name}' and has none "
                          "(collect them with prune.calibration_batches >= 1)")
    return getattr(stats, table)[name]


@torch.no_grad()
def weight_scores(criterion: str, name: str, weight: torch.Tensor,
                  stats: Optional[GradientStats] = None) -> torch.Tensor:
    """Per-element importance of parameter `name` (higher = more important), the weight's shape."""
    w = weight.detach()
    if criterion == "l1":
        return w.abs()
    if criterion == "l2":
        return w * w
    if criterion == "random":
        return torch.rand(w.shape)
    if criterion == "taylor":
        mean = _stat(stats, "sum", name, w, criterion) / max(1, cast(GradientStats, stats).count[name])
        return (w * mean).abs()
    if criterion == "hessian":
        fisher = _stat(stats, "sq", name, w, criterion) / max(1, cast(GradientStats, stats).count[name])
        return 0.5 * w * w * fisher
    if criterion == "movement":
        return -w * _stat(stats, "sum", name, w, criterion)
    if criterion in CHANNEL_ONLY:
        raise ConfigError(f"importance '{criterion}' scores whole channels, not single weights: use it with the "
                          f"channel pattern, or choose one of {list(WEIGHT_CRITERIA)} for masks")
    raise ConfigError(f"unknown importance '{criterion}': choose one of {sorted(WEIGHT_CRITERIA + CHANNEL_ONLY)}")


__all__ = ["CHANNEL_ONLY", "GRADIENT_CRITERIA", "GradientStats", "WEIGHT_CRITERIA", "collect_gradients",
           "needs_gradients", "weight_scores"]
