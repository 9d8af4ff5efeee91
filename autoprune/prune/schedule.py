"""Pruning schedules (`prune.schedule`): when, during recovery, a plan's sparsity is reached.

    oneshot    prune to the plan, then fine-tune (recover.epochs)                               [default]
    iterative  k = iterative.steps prune -> fine-tune steps: at the start of step i (i = 1..k) prune to
               i/k of every ratio, then fine-tune recover.epochs / k (split by optimizer steps)
    agp        automated gradual pruning (Zhu & Gupta 2017) during fine-tuning: agp.steps updates evenly
               spaced between agp.start and agp.end (fractions of the fine-tuning steps); update i of n
               prunes to s_i = s_f * (1 - (1 - i/n)^3) of every ratio (the cubic schedule), then fine-tuning
               goes on at the final sparsity
    lth        lottery-ticket rewinding (Frankle et al. 2019/2020): train the unpruned model for
               lth.train_epochs (default recover.epochs), prune, rewind the surviving weights to the
               checkpoint after lth.rewind_epoch epochs of that training (0 = the unpruned baseline) and
               retrain for recover.epochs; with lth.rounds = R > 1, R prune -> rewind -> retrain rounds
               reach i/R of every ratio in round i (iterative magnitude pruning)

Channel-pattern groups are removed physically at each step (kept counts always refer to the unpruned
widths, so every schedule ends at exactly the one-shot widths); mask patterns get recomputed masks. An
N:M group goes M:M -> ... -> N:M. The final architecture is known before fine-tuning starts, and the
latency of a dense graph depends on its shapes only, so the evaluator measures it first (on the final
architecture pruned one-shot from the same start) and checks after recovery that the fine-tuned model
has exactly that architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

SCHEDULES = ("oneshot", "iterative", "agp", "lth")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "oneshot"
    steps: int = 3                 # iterative: prune/fine-tune steps
    agp_steps: int = 4             # agp: pruning updates
    agp_start: float = 0.0         # agp: fraction of fine-tuning at which pruning starts
    agp_end: float = 0.5           # agp: ... at which the final sparsity is reached
    rounds: int = 1                # lth: prune -> rewind -> retrain rounds
    rewind_epoch: int = 0          # lth: rewind point, in epochs of the first (unpruned) training run
    train_epochs: Optional[int] = None  # lth: epochs of training before each pruning (None: recover.epochs)

    def __post_init__(self) -> None:
        """The ranges are the config's (autoprune.config: prune.schedule, prune.iterative/agp/lth), declared once."""
        from autoprune.config import AgpConfig, IterativeConfig, LthConfig, PruneConfig
        from autoprune.schema import check_value, field_at, rule_of

        check_value(rule_of(field_at(PruneConfig, "schedule")[1]), self.kind, "prune.schedule")
        IterativeConfig(self.steps)
        AgpConfig(self.agp_steps, self.agp_start, self.agp_end)
        LthConfig(self.rounds, self.rewind_epoch, self.train_epochs)

    @classmethod
    def from_prune(cls, prune: Any) -> "ScheduleConfig":
        """From the `prune:` config section (a PruneConfig, or a plain mapping checked as one)."""
        from autoprune.config import PruneConfig
        from autoprune.schema import build

        p = build(PruneConfig, prune, "prune")
        return cls(p.schedule, p.iterative.steps, p.agp.steps, p.agp.start, p.agp.end, p.lth.rounds,
                   p.lth.rewind_epoch, p.lth.train_epochs)

    def points(self, total_steps: int) -> list[tuple[int, float]]:
        """(optimizer step, fraction of the plan) at which to prune, for iterative and agp."""
        if self.kind == "iterative":
            k = self.steps
            return [(round((i - 1) * total_steps / k), i / k) for i in range(1, k + 1)]
        if self.kind == "agp":
            n = self.agp_steps
            span = self.agp_end - self.agp_start
            return [(round((self.agp_start + span * i / n) * total_steps), 1.0 - (1.0 - i / n) ** 3)
                    for i in range(1, n + 1)]
        return [(0, 1.0)]

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def agp_fraction(i: int, n: int) -> float:
    """Zhu & Gupta's cubic schedule with initial sparsity 0: s_i / s_f after update i of n."""
    return 1.0 - (1.0 - i / n) ** 3


__all__ = ["SCHEDULES", "ScheduleConfig", "agp_fraction"]
