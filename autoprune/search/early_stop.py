"""Early stopping for multi-objective pruning searches.

Optuna's pruners (median, successive halving) are single-objective: `Trial.report` raises for
multi-objective studies, and a median rule on accuracy alone would kill exactly the fast, less
accurate candidates a Pareto front needs. autoprune's rule is Pareto-aware instead:

    after fine-tuning epoch e, stop a candidate if some completed trial that is at least as fast
    had a validation accuracy higher by more than `margin` after the same epoch e.

Such a candidate would almost surely end dominated. Latency is known before fine-tuning starts
(the pruned graph is final), so the comparison is available from the first epoch on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import optuna


@dataclass(frozen=True)
class ParetoStopper:
    study: optuna.Study
    margin: float = 0.02
    min_epoch: int = 0

    def monitor(self, trial: optuna.Trial) -> Callable[[int, float, float], None]:
        """The callback for one trial: records its validation curve, raises TrialPruned to stop it."""
        curve: list[float] = []

        def check(epoch: int, val_accuracy: float, latency_ms: float) -> None:
            curve.append(val_accuracy)
            trial.set_user_attr("val_curve", list(curve))
            if epoch < self.min_epoch:
                return
            for other in self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
                their = other.user_attrs.get("val_curve", [])
                if (other.user_attrs.get("latency_ms", float("inf")) <= latency_ms and len(their) > epoch
                        and their[epoch] > val_accuracy + self.margin):
                    raise optuna.TrialPruned(
                        f"after epoch {epoch + 1}: val {val_accuracy:.4f} trails trial #{other.number} "
                        f"({their[epoch]:.4f}, {other.user_attrs['latency_ms']:.3f} ms <= {latency_ms:.3f} ms) "
                        f"by more than {self.margin}")

        return check
