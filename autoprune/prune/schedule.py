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
import copy
from typing import Any, Callable, ClassVar, Optional, Protocol, cast

import torch.nn as nn

from autoprune.plan import PrunePlan
from autoprune.prune.engine import MaskSet, PruneResult, PruningEngine
from autoprune.prune.saliency import GradientStats, needs_gradients

OnEpoch = Optional[Callable[[int, nn.Module], None]]
Recovered = tuple[nn.Module, MaskSet, dict]   # the recovered model, its masks, layers a mask pattern skipped


class RecoveryHost(Protocol):
    """What a schedule recovers with (CandidateEvaluator): the engine, the unpruned widths, fine-tuning."""

    engine: PruningEngine

    def widths(self) -> dict[str, int]: ...

    def total_steps(self) -> int: ...

    def finetune(self, model: nn.Module, **kwargs) -> None: ...


class Schedule:
    """One pruning schedule (`prune.schedule`). `prunes_up_front`: the plan is applied once before
    recovery and the pruned model itself is measured and fine-tuned (one-shot); otherwise the final
    architecture is measured on a one-shot twin first and `recover` prunes as it goes."""

    name: ClassVar[str]
    prunes_up_front: ClassVar[bool] = False

    def __init__(self, config: "ScheduleConfig"):
        self.config = config

    def points(self, total_steps: int) -> list[tuple[int, float]]:
        """(optimizer step, fraction of the plan) at which to prune."""
        return [(0, 1.0)]

    def recover(self, host: RecoveryHost, start: nn.Module, plan: PrunePlan, on_epoch: OnEpoch) -> Recovered:
        raise NotImplementedError


class OneShot(Schedule):
    name, prunes_up_front = "oneshot", True

    def recover(self, host: RecoveryHost, start: nn.Module, plan: PrunePlan, on_epoch: OnEpoch) -> Recovered:
        raise AssertionError("one-shot pruning is applied before recovery: see CandidateEvaluator.evaluate")


class _Gradual(Schedule):
    """iterative / agp: prune events during fine-tuning (channels physically, masks recomputed)."""

    def recover(self, host: RecoveryHost, start: nn.Module, plan: PrunePlan, on_epoch: OnEpoch) -> Recovered:
        model = copy.deepcopy(start)
        widths = host.widths()
        masks, skipped = MaskSet(), {}
        stats = GradientStats() if needs_gradients(plan.importance) else None

        def event(fraction: float) -> Callable[[nn.Module], bool]:
            def fn(m: nn.Module) -> bool:
                use = stats if stats is not None and len(stats) else None  # none yet: calibration batches
                result = host.engine.apply(m, plan.scaled(fraction), stats=use, reference=widths)
                masks.masks = result.masks.masks
                skipped.update(result.skipped)
                if stats is not None:
                    stats.reset()
                return any(result.removed.values())
            return fn

        events = [(step, event(fraction)) for step, fraction in self.points(host.total_steps())]
        host.finetune(model, masks=masks, on_epoch=on_epoch, events=events,
                      grad_hook=stats.accumulate if stats is not None else None)
        return model, masks, skipped


class Iterative(_Gradual):
    name = "iterative"

    def points(self, total_steps: int) -> list[tuple[int, float]]:
        k = self.config.steps
        return [(round((i - 1) * total_steps / k), i / k) for i in range(1, k + 1)]


class Agp(_Gradual):
    name = "agp"

    def points(self, total_steps: int) -> list[tuple[int, float]]:
        c = self.config
        n, span = c.agp_steps, c.agp_end - c.agp_start
        return [(round((c.agp_start + span * i / n) * total_steps), agp_fraction(i, n)) for i in range(1, n + 1)]


class LotteryTicket(Schedule):
    """lth: train → prune → rewind survivors to the early checkpoint → (repeat) → retrain."""

    name = "lth"

    def recover(self, host: RecoveryHost, start: nn.Module, plan: PrunePlan, on_epoch: OnEpoch) -> Recovered:
        sched = self.config
        epochs = sched.train_epochs      # None: recover.epochs
        widths = host.widths()
        stats = GradientStats() if needs_gradients(plan.importance) else None
        hook = stats.accumulate if stats is not None else None
        model = copy.deepcopy(start)
        rewind = copy.deepcopy(start) if sched.rewind_epoch == 0 else None

        def keep_checkpoint(epoch: int, m: nn.Module) -> None:
            nonlocal rewind
            if epoch + 1 == sched.rewind_epoch:
                rewind = copy.deepcopy(m)

        host.finetune(model, epochs=epochs, grad_hook=hook, on_epoch=keep_checkpoint if rewind is None else None)
        if rewind is None:  # rewind_epoch past the training run: the trained weights themselves
            rewind = copy.deepcopy(model)
        masks, skipped = MaskSet(), {}
        for r in range(1, sched.rounds + 1):
            result: PruneResult = host.engine.apply(model, plan.scaled(r / sched.rounds),
                                                    stats=stats if stats is not None and len(stats) else None,
                                                    reference=widths)
            skipped.update(result.skipped)
            host.engine.structural.apply_indices(rewind, result.removed)   # same channels go from the checkpoint
            model = copy.deepcopy(rewind)
            masks = result.masks.rebind(model)                       # same zeros on the rewound weights
            masks.apply()
            if stats is not None:
                stats.reset()
            if r < sched.rounds:
                host.finetune(model, epochs=epochs, masks=masks, grad_hook=hook)
        host.finetune(model, masks=masks, on_epoch=on_epoch)
        return model, masks, skipped


SCHEDULE_CLASSES: dict[str, type[Schedule]] = {c.name: c for c in (OneShot, Iterative, Agp, LotteryTicket)}
SCHEDULES = tuple(SCHEDULE_CLASSES)


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

        check_value(rule_of(cast(tuple, field_at(PruneConfig, "schedule"))[1]), self.kind, "prune.schedule")
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

    @property
    def schedule(self) -> Schedule:
        """The schedule this config describes (registered in SCHEDULE_CLASSES by name)."""
        return SCHEDULE_CLASSES[self.kind](self)

    def points(self, total_steps: int) -> list[tuple[int, float]]:
        """(optimizer step, fraction of the plan) at which to prune, for iterative and agp."""
        return self.schedule.points(total_steps)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def agp_fraction(i: int, n: int) -> float:
    """Zhu & Gupta's cubic schedule with initial sparsity 0: s_i / s_f after update i of n."""
    return 1.0 - (1.0 - i / n) ** 3


__all__ = ["SCHEDULES", "SCHEDULE_CLASSES", "Schedule", "ScheduleConfig", "agp_fraction"]
