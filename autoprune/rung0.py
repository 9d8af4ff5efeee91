"""Rung 0 of a multi-fidelity search: a candidate's cheap score, before any full recovery.

    prune a copy of the start model → rung-0 recovery → val accuracy (+ latency: measured or predicted)

The rung-0 recovery depends on the model:

- **with BatchNorm** (CNNs): adaptive BN (EagleEye; autoprune.recover.adaptive_bn): the BatchNorm
  statistics are re-estimated on `bn_batches` training batches, with no gradient step. A forward pass
  over ~500 samples: on the default task about 1/20 of a 3-epoch fine-tune, 1/40 of the 6-epoch default.
- **without BatchNorm** (transformers: LayerNorm normalises each token by its own statistics, so there
  is no running statistic to re-estimate and adaptive BN is a no-op): a short fine-tune of `steps`
  optimizer steps (default: 10 % of the full recovery's steps, at least 5) with the recovery's settings,
  on a seeded random subset of the training split. Pruning heads / FFN neurons changes the scale of what
  each layer adds to the residual stream; a few SGD steps re-fit that (and the classifier head), which the
  raw pruned accuracy does not show. A tenth of the recovery keeps rung 0 an order of magnitude cheaper
  than the full rung while every candidate gets the same budget, so the ranking is comparable.

Latency: measured with the evaluator's backend (cheap for ORT on CPU) unless a latency table
(autoprune.hw.predictor) is given, which predicts it from the pruned model's widths instead (for profiles
where measuring is expensive). `Rung0Scorer` needs only the evaluator's pieces; a multi-fidelity search
(`search.fidelity.rungs=[rung0,full]`) calls `score(plan)` through autoprune.search.fidelity.Rung0Step,
which decides whom to promote.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sized, cast

import torch
import torch_pruning as tp
from torch.utils.data import Subset

from autoprune.candidate import CandidateEvaluator
from autoprune.errors import ConfigError
from autoprune.hw import export_model
from autoprune.hw.predictor import LatencyTable
from autoprune.plan import PrunePlan
from autoprune.recover import evaluate, finetune
from autoprune.recover.adaptive_bn import batchnorms, recalibrate_batchnorm
from autoprune.recover.finetune import steps_per_epoch

ADAPTIVE_BN = "adaptive_bn"
SHORT_FINETUNE = "short_finetune"


@dataclass(frozen=True)
class Rung0Config:
    """bn_batches: training batches (of recover.batch_size) that re-estimate BatchNorm statistics;
    steps: fine-tune steps of models without BatchNorm (None: 10 % of the full recovery's, at least 5);
    measure: time each candidate with the backend when no latency table is given (False: no latency)."""

    bn_batches: int = 8
    steps: Optional[int] = None
    measure: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.bn_batches, int) or self.bn_batches < 1:
            raise ConfigError(f"rung-0 bn_batches={self.bn_batches!r} must be an integer >= 1, e.g. 8")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"rung-0 steps={self.steps!r} must be an integer >= 1 (or null for 10 % of the "
                              "recovery's steps)")


@dataclass(frozen=True)
class Rung0Result:
    """A candidate scored at rung 0. `method`: adaptive_bn | short_finetune; `latency_source`: measured |
    predicted | None (not asked for)."""

    plan: PrunePlan
    val_accuracy: float
    method: str
    macs: int
    params: int
    latency_ms: Optional[float] = None
    latency_source: Optional[str] = None
    seconds: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {"val_accuracy": self.val_accuracy, "macs": float(self.macs), "params": float(self.params)}
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        return out


class Rung0Scorer:
    """Scores plans at rung 0 with an evaluator's start model, pruning engine, data and recovery settings."""

    def __init__(self, evaluator: CandidateEvaluator, config: Rung0Config = Rung0Config(),
                 table: Optional[LatencyTable] = None):
        self.evaluator, self.config, self.table = evaluator, config, table

    @property
    def method(self) -> str:
        return ADAPTIVE_BN if batchnorms(self.evaluator.start_model()) else SHORT_FINETUNE

    def finetune_steps(self) -> int:
        """Optimizer steps of the short fine-tune (models without BatchNorm)."""
        if self.config.steps is not None:
            return self.config.steps
        train = self.evaluator.recover.train
        return max(5, math.ceil(0.1 * train.epochs * steps_per_epoch(self.evaluator.data.train, train)))

    def score(self, plan: PrunePlan) -> Rung0Result:
        ev, cfg = self.evaluator, self.config
        train_cfg = ev.recover.train
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[stage] = now - clock
            clock = now

        torch.manual_seed(ev.recover.seed)
        model = copy.deepcopy(ev.start_model())
        pruned = ev.engine.apply(model, plan)
        lap("prune")
        method = self.method
        if method == ADAPTIVE_BN:
            recalibrate_batchnorm(model, ev.data.train, cfg.bn_batches, train_cfg.batch_size, ev.recover.seed)
        else:
            steps = self.finetune_steps()
            rng = torch.Generator().manual_seed(ev.recover.seed)
            n = min(len(cast(Sized, ev.data.train)), steps * train_cfg.batch_size)
            subset = Subset(ev.data.train, torch.randperm(len(cast(Sized, ev.data.train)), generator=rng)[:n].tolist())
            finetune(model, subset, train_cfg, epochs=math.ceil(steps * train_cfg.batch_size / max(n, 1)),
                     masks=pruned.masks)
        lap("recover")
        val_accuracy = evaluate(model, ev.data.val)
        macs, params = tp.utils.count_ops_and_params(model, ev.example_input)
        lap("score")
        latency, source = None, None
        if self.table is not None:
            latency, source = float(self.table.predict_model(model)), "predicted"
        elif cfg.measure:
            with tempfile.TemporaryDirectory() as tmp:
                latency = ev.backend.measure(export_model(model, ev.example_input, Path(tmp)), ev.profile).median_ms
            source = "measured"
        if source:
            lap("latency")
        return Rung0Result(plan, val_accuracy, method, int(macs), int(params), latency, source, seconds)


__all__ = ["ADAPTIVE_BN", "SHORT_FINETUNE", "Rung0Config", "Rung0Result", "Rung0Scorer"]
