"""Recovery configuration (`recover:` in conf/config.yaml): fine-tuning, distillation, regulariser.

`RecoverSection` is the `recover:` section as written (flat training keys plus `kd` and `regulariser`);
`RecoverConfig` is what the evaluator uses (the TrainConfig apart). Ranges and choices are declared on
the fields (autoprune.schema) and checked once, wherever the settings come from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autoprune.recover.finetune import TrainConfig
from autoprune.schema import build, check, setting

REGULARISERS = ("none", "bn_l1", "group_lasso")


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation from the unpruned baseline: loss = (1 - alpha) * CE + alpha * T^2 * KL."""

    enabled: bool = False
    temperature: float = setting(4.0, gt=0)
    alpha: float = setting(0.5, ge=0, le=1, fix="the weight of the distillation loss, e.g. {key}=0.5")

    def __post_init__(self) -> None:
        check(self, "recover.kd")


@dataclass(frozen=True)
class RegulariserConfig:
    """Sparsity-inducing pre-pruning phase: `epochs` of training the unpruned model with loss + weight * R,
    R = sum |gamma| of BatchNorm layers (bn_l1, network slimming) or sum of the L2 norms of every prunable
    output channel / neuron (group_lasso). Run once per search; trials start from its result."""

    kind: str = setting("none", choices=REGULARISERS)
    weight: float = setting(1e-4, ge=0)
    epochs: int = setting(0, ge=0)

    def __post_init__(self) -> None:
        check(self, "recover.regulariser")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.epochs > 0 and self.weight > 0


@dataclass(frozen=True)
class RecoverSection(TrainConfig):
    """The `recover:` config section: the fine-tuning keys of TrainConfig, distillation and regulariser."""

    # 6, not 3: on the default task (1,077 training images, 17 steps an epoch) 3 epochs left even a 25 %
    # uniform prune 1.1 points below the baseline; 6 brought a 50 % one to it (docs/BENCHMARKS.md, default search)
    epochs: int = setting(6, ge=0)
    kd: KDConfig = field(default_factory=KDConfig)
    regulariser: RegulariserConfig = field(default_factory=RegulariserConfig)

    def __post_init__(self) -> None:
        check(self, "recover")

    def train(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


@dataclass(frozen=True)
class RecoverConfig:
    """Fine-tuning of every candidate (`train`) plus distillation (`kd`) and the regulariser phase."""

    train: TrainConfig = field(default_factory=lambda: RecoverSection().train())
    kd: KDConfig = field(default_factory=KDConfig)
    regulariser: RegulariserConfig = field(default_factory=RegulariserConfig)

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def epochs(self) -> int:
        return self.train.epochs

    @classmethod
    def coerce(cls, value: Any) -> "RecoverConfig":
        """From a RecoverConfig, a TrainConfig, a RecoverSection or the `recover:` mapping."""
        if isinstance(value, RecoverConfig):
            return value
        if isinstance(value, TrainConfig) and not isinstance(value, RecoverSection):
            return cls(value)
        section = build(RecoverSection, value, "recover")
        return cls(section.train(), section.kd, section.regulariser)
