"""Adaptive BatchNorm (EagleEye, Li et al. 2020): re-estimate the BatchNorm statistics of a pruned model on
a few training batches, with no gradient step, so that its accuracy says how good the architecture is
before any fine-tuning.

Removing channels shifts the distribution every later layer sees, so the running mean and variance the
baseline learnt no longer fit, and the pruned model's raw accuracy is mostly noise from that mismatch.
Re-estimated on ~500 training samples (a forward pass, no backward), the accuracy ranks candidates much
like their accuracy after fine-tuning does (benchmarks/rung0_tau.py; docs/BENCHMARKS.md).

Only the BatchNorm modules run in training mode while the statistics are gathered (dropout and the rest
stay in eval mode, as at inference). Each running mean / variance becomes the plain average over the
batches (momentum None), then the modules get their momentum back. Weights are not touched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> list[BatchNorm]:
    """The BatchNorm layers that keep running statistics (the ones adaptive BN re-estimates)."""
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, batches: int = 8, batch_size: int = 64,
                          seed: int = 0) -> int:
    """Reset and re-estimate every BatchNorm's running statistics on `batches` shuffled (seeded) batches of
    `data`; returns the number of BatchNorm layers re-estimated (0: none, the model is unchanged). The
    model is left in eval mode."""
    norms = batchnorms(model)
    if not norms or batches <= 0:
        model.eval()
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None      # cumulative average over the batches, not an exponential one
        m.train()
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    try:
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(norms)
