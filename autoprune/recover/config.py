"""Recovery configuration (`recover:` in conf/config.yaml): fine-tuning, distillation, regulariser."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from autoprune.errors import ConfigError
from autoprune.recover.finetune import TrainConfig

REGULARISERS = ("none", "bn_l1", "group_lasso")


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation from the unpruned baseline: loss = (1 - alpha) * CE + alpha * T^2 * KL."""

    enabled: bool = False
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"recover.kd.temperature={self.temperature} must be > 0: use e.g. 4")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"recover.kd.alpha={self.alpha} must be in [0, 1] (weight of the distillation loss)")


@dataclass(frozen=True)
class RegulariserConfig:
    """Sparsity-inducing pre-pruning phase: `epochs` of training the unpruned model with loss + weight * R,
    R = sum |gamma| of BatchNorm layers (bn_l1, network slimming) or sum of the L2 norms of every prunable
    output channel / neuron (group_lasso). Run once per search; trials start from its result."""

    kind: str = "none"
    weight: float = 1e-4
    epochs: int = 0

    def __post_init__(self) -> None:
        if self.kind not in REGULARISERS:
            raise ConfigError(f"recover.regulariser.kind='{self.kind}': choose one of {list(REGULARISERS)}")
        if self.weight < 0 or self.epochs < 0:
            raise ConfigError("recover.regulariser.weight and .epochs must be >= 0")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.epochs > 0 and self.weight > 0


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of {[f.name for f in dataclasses.fields(cls)]}")
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(data) - names)
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; known: {sorted(names)}")
    return cls(**data)


@dataclass(frozen=True)
class RecoverConfig:
    """Fine-tuning of every candidate (`train`) plus distillation (`kd`) and the regulariser phase."""

    train: TrainConfig = field(default_factory=TrainConfig)
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
        """From a RecoverConfig, a TrainConfig, or the `recover:` mapping (flat training keys + kd + regulariser)."""
        if isinstance(value, RecoverConfig):
            return value
        if isinstance(value, TrainConfig):
            return cls(value)
        data = dict(value or {})
        kd = _build(KDConfig, data.pop("kd", None), "recover.kd")
        reg = _build(RegulariserConfig, data.pop("regulariser", None), "recover.regulariser")
        return cls(TrainConfig.checked("recover", **data), kd, reg)
