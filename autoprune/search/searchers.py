"""Searchers behind one ask/tell interface; the Optuna study is always the record.

- Optuna samplers: tpe (multivariate multi-objective TPE), nsga2, gp, random, qmc.
- `uniform`: the baseline sweep — every trial prunes all groups by the same ratio, spread over the
  ratio grid (coarse to fine), so a searched front can be compared with uniform pruning.
- `allocate`: HALP-style allocation (autoprune.search.allocate): every proposal keeps the most channel
  importance under a latency budget predicted by the latency table (`search.allocate.table`) or by
  MACs; the budgets are spread over (narrowest plan, baseline) coarse to fine, a plan already in the study
  is skipped, and once the budgets are spent the study's sampler (multivariate TPE) proposes.
- NNI tuners (tpe, evolution, anneal, random; `pip install autoprune[nni]`): single-objective, so
  they maximise a documented scalarisation of the (val accuracy, latency) pair:
      score = val_accuracy + speedup_weight * log2(baseline_latency / latency)
  i.e. each halving of latency is worth `speedup_weight` accuracy (default 0.02 = 2 points).
  Their proposals are enqueued into the Optuna study, so storage, resume and reports are shared.
"""

from __future__ import annotations

import math
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol

import optuna

from autoprune.errors import ConfigError
from autoprune.search.space import SearchSpace

log = logging.getLogger("autoprune")
OPTUNA_SAMPLERS = ("tpe", "nsga2", "gp", "random", "qmc")
NNI_TUNERS = ("tpe", "evolution", "anneal", "random")


@dataclass(frozen=True)
class SearcherSettings:
    """What searchers may need beyond the study and the space."""

    seed: int = 0
    nni_tuner: str = "tpe"
    speedup_weight: float = 0.02
    baseline_latency_ms: float = 1.0
    allocation: Optional[Any] = None   # search.sampler=allocate: autoprune.search.allocate.AllocationInputs

    @classmethod
    def of(cls, cfg: Any, baseline_latency_ms: float, allocation: Optional[Any] = None) -> "SearcherSettings":
        """From the search config (`seed`, `search.nni.*`) and the baseline measured in this run."""
        return cls(int(cfg.seed), str(cfg.search.nni.tuner), float(cfg.search.nni.speedup_weight),
                   float(baseline_latency_ms), allocation)


class Searcher(Protocol):
    def ask(self) -> Optional[optuna.Trial]:
        """The next trial, or None when the searcher has nothing left to propose (a finished sweep)."""

    def tell(self, trial: optuna.Trial, values: list[float] | None, metrics: dict | None,
             state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE) -> None:
        """values/metrics are None for a trial that failed (or, with state=PRUNED, was stopped)."""


def make_sampler(name: str, seed: int, population_size: int = 8) -> optuna.samplers.BaseSampler:
    samplers = {
        # Multivariate TPE learns from the first trials on; NSGA-II needs several generations.
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False),
        "uniform": lambda: optuna.samplers.RandomSampler(seed=seed),  # every trial is enqueued
        # allocations are enqueued; once their budgets are spent, TPE learns from them
        "allocate": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5),
    }
    if name not in samplers:
        raise ConfigError(f"unknown search.sampler '{name}': choose one of {sorted(samplers)}")
    return samplers[name]()


class OptunaSearcher:
    """An Optuna sampler proposes (the study's own sampler: search.sampler)."""

    backend: ClassVar[str] = "optuna"
    samplers: ClassVar[tuple[str, ...]] = OPTUNA_SAMPLERS   # the search.sampler values it serves; () = any

    def __init__(self, study: optuna.Study):
        self.study = study

    @classmethod
    def build(cls, study: optuna.Study, space: SearchSpace, settings: SearcherSettings) -> "Searcher":
        return cls(study)

    def ask(self) -> Optional[optuna.Trial]:
        return self.study.ask()

    def tell(self, trial, values, metrics, state=optuna.trial.TrialState.COMPLETE) -> None:
        if values is None:
            pruned = state == optuna.trial.TrialState.PRUNED
            self.study.tell(trial, state=state if pruned else optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values)


def _coarse_to_fine(n: int) -> list[int]:
    """0..n-1 ordered so that any prefix is spread over the range (ends first, then bisection)."""
    order, seen = [], set()
    for level in range(n.bit_length() + 1):
        parts = 2 ** level
        for k in range(parts + 1):
            i = round(k * (n - 1) / parts) if n > 1 else 0
            if i not in seen:
                seen.add(i)
                order.append(i)
    return order


class UniformGridSearcher(OptunaSearcher):
    """Uniform ratio for every group; the next unused grid ratio at each ask. A trial already waiting (a
    retry, a warm start) is asked first; once every grid ratio has a trial the sweep is done (None)."""

    samplers = ("uniform",)

    def __init__(self, study: optuna.Study, space: SearchSpace):
        super().__init__(study)
        self.space = space
        r = space.dimensions[0].range
        self.grid = [round(r.low + i * r.step, 10) for i in range(int(round((r.high - r.low) / r.step)) + 1)]

    @classmethod
    def build(cls, study: optuna.Study, space: SearchSpace, settings: SearcherSettings) -> "Searcher":
        return cls(study, space)

    def ask(self) -> Optional[optuna.Trial]:
        if self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.WAITING]):
            return self.study.ask()
        used = {t.params.get(self.space.dimensions[0].param) for t in self.study.get_trials(deepcopy=False)}
        fresh = [self.grid[i] for i in _coarse_to_fine(len(self.grid)) if self.grid[i] not in used]
        if not fresh:
            log.info("the uniform sweep is done: every one of its %d ratios has a trial", len(self.grid))
            return None
        self.study.enqueue_trial(self.space.encode(self.space.uniform(fresh[0])), skip_if_exists=False)
        return self.study.ask()


def _key(params: dict) -> tuple:
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in params.items()))


def _proposed(study: optuna.Study) -> set[tuple]:
    """The params of every trial of the study, waiting ones (enqueued, not yet asked) included."""
    return {_key(t.system_attrs.get("fixed_params", {}) if t.state == optuna.trial.TrialState.WAITING
                 else dict(t.params)) for t in study.get_trials(deepcopy=False)}


class AllocationSearcher(OptunaSearcher):
    """HALP allocations at a deterministic sequence of latency budgets (autoprune.search.allocate.
    budget_sequence), each plan once: a budget whose plan the study already holds is skipped. A trial
    already waiting (a warm start) is asked first. The allocation is recorded in the trial's user attr
    `allocation` (budget fraction, predicted latency, importance kept). When every budget is spent the
    study's own sampler (search.sampler=allocate: multivariate TPE) proposes, learning from them."""

    samplers = ("allocate",)

    def __init__(self, study: optuna.Study, space: SearchSpace, inputs: Any):
        from autoprune.search.allocate import budget_sequence

        super().__init__(study)
        self.space, self.inputs = space, inputs
        self.fractions = budget_sequence(inputs.narrowest_fraction(space))
        self._next = 0
        self._exhausted = False

    @classmethod
    def build(cls, study: optuna.Study, space: SearchSpace, settings: SearcherSettings) -> "Searcher":
        if settings.allocation is None:
            raise ConfigError("search.sampler=allocate needs the model's channel importance and a latency model "
                              "(autoprune.search.allocate.allocation_inputs): run it through a search")
        return cls(study, space, settings.allocation)

    def ask(self) -> optuna.Trial:
        if self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.WAITING]):
            return self.study.ask()
        proposed = _proposed(self.study)
        while self._next < len(self.fractions):
            fraction = self.fractions[self._next]
            self._next += 1
            allocation = self.inputs.allocate(self.space, fraction)
            params = self.space.encode(allocation.plan)
            if _key(params) in proposed:
                continue
            record = {"budget_fraction": round(fraction, 6), "budget": allocation.budget_ms,
                      "predicted": allocation.predicted_ms, "importance_kept": allocation.importance_kept,
                      "latency_model": self.inputs.kind}
            self.study.enqueue_trial(params, user_attrs={"allocation": record}, skip_if_exists=False)
            return self.study.ask()
        if not self._exhausted:
            self._exhausted = True
            log.info("allocation: all %d budgets are spent (or gave plans already tried); the study's sampler "
                     "(multivariate TPE) proposes from here", len(self.fractions))
        return self.study.ask()


class NniSearcher(OptunaSearcher):
    """An NNI tuner proposes; the Optuna study records (proposals are enqueued, results told to both)."""

    backend = "nni"
    samplers = ()   # search.sampler is not used: search.nni.tuner chooses

    @classmethod
    def build(cls, study: optuna.Study, space: SearchSpace, settings: SearcherSettings) -> "Searcher":
        return cls(study, space, settings.nni_tuner, settings.seed, settings.speedup_weight,
                   settings.baseline_latency_ms)

    def __init__(self, study: optuna.Study, space: SearchSpace, tuner: str, seed: int, speedup_weight: float,
                 baseline_latency_ms: float):
        super().__init__(study)
        if tuner not in NNI_TUNERS:
            raise ConfigError(_unknown_tuner(tuner))
        self.space, self.weight, self.baseline_ms = space, speedup_weight, baseline_latency_ms
        self.tuner = _nni_tuner(tuner, seed)
        nni_space = {d.param: {"_type": "quniform", "_value": [d.range.low, d.range.high, d.range.step]}
                     for d in space.dimensions}
        if len(space.importances) > 1:
            nni_space["importance"] = {"_type": "choice", "_value": list(space.importances)}
        self.tuner.update_search_space(nni_space)
        history = [{"parameter": dict(t.params), "value": self.score(t.user_attrs)}
                   for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
                   if "val_accuracy" in t.user_attrs]
        if history:  # resume: the tuner learns from every earlier trial of the study
            self.tuner.import_data(history)
        self._ids: dict[int, tuple[int, dict]] = {}
        self._next_id = len(study.trials)

    def score(self, metrics: dict) -> float:
        return float(metrics["val_accuracy"]) + self.weight * math.log2(self.baseline_ms / float(metrics["latency_ms"]))

    def ask(self) -> optuna.Trial:
        pid, self._next_id = self._next_id, self._next_id + 1
        raw = _plain(self.tuner.generate_parameters(pid))
        if pid in getattr(self.tuner, "total_data", {}):
            # NNI 3.0's hyperopt-based tuners (anneal) compare stored numpy scalars with [] on
            # receive_trial_result, which numpy 2 rejects; plain Python numbers avoid it.
            self.tuner.total_data[pid] = _plain(self.tuner.total_data[pid])
        params = {k: (v if k == "importance" else self._snap(k, float(v))) for k, v in raw.items()}
        self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.study.ask()
        self._ids[trial.number] = (pid, raw)
        return trial

    def _snap(self, param: str, value: float) -> float:
        return next(d.range.snap(value) for d in self.space.dimensions if d.param == param)

    def tell(self, trial, values, metrics, state=optuna.trial.TrialState.COMPLETE) -> None:
        super().tell(trial, values, metrics, state)
        pid, raw = self._ids.pop(trial.number)
        if metrics is not None:
            self.tuner.receive_trial_result(pid, raw, self.score(metrics))
        else:
            self.tuner.trial_end(pid, False)  # positional: TpeTuner names it _success


SEARCHERS: tuple[type[OptunaSearcher], ...] = (UniformGridSearcher, AllocationSearcher, OptunaSearcher, NniSearcher)
BACKENDS = tuple(dict.fromkeys(c.backend for c in SEARCHERS))


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown search.backend '{backend}': choose {' or '.join(BACKENDS)}")


def searcher_class(backend: str, sampler: str) -> type[OptunaSearcher]:
    """The searcher for `search.backend` and `search.sampler` (the first registered one that serves both);
    `build(study, space, settings)` makes it."""
    check_backend(backend)
    for cls in SEARCHERS:
        if cls.backend == backend and (not cls.samplers or sampler in cls.samplers):
            return cls
    raise ConfigError(f"unknown search.sampler '{sampler}' for search.backend={backend}: choose one of "
                      f"{sorted(s for c in SEARCHERS if c.backend == backend for s in c.samplers)}")


def check_nni(tuner: str) -> None:
    """Raise ConfigError unless `tuner` names an NNI tuner and NNI is installed (builds one and drops it)."""
    if tuner not in NNI_TUNERS:
        raise ConfigError(_unknown_tuner(tuner))
    _nni_tuner(tuner, 0)


def _unknown_tuner(tuner: str) -> str:
    return f"unknown search.nni.tuner '{tuner}': choose one of {list(NNI_TUNERS)}"


def _plain(value):
    """numpy scalars -> Python numbers, recursively through dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _nni_tuner(name: str, seed: int):
    try:
        if name == "tpe":
            from nni.algorithms.hpo.tpe_tuner import TpeTuner
            return TpeTuner(optimize_mode="maximize", seed=seed)
        if name == "random":
            from nni.algorithms.hpo.random_tuner import RandomTuner
            return RandomTuner(seed=seed)
        if name == "evolution":
            from nni.algorithms.hpo.evolution_tuner import EvolutionTuner
            return EvolutionTuner(optimize_mode="maximize", population_size=8)
        from nni.algorithms.hpo.hyperopt_tuner import HyperoptTuner
        return HyperoptTuner("anneal", optimize_mode="maximize")
    except ImportError as exc:
        raise ConfigError(f"search.backend=nni needs NNI ({exc.name} is missing): pip install 'autoprune[nni]'") from None
