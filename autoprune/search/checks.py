"""Checks of a search's settings that need more than the config schema (autoprune.config) can say:
whether NNI is installed and the hardware profile can be measured from here. Run first, so that a
mistake fails in seconds and before the search creates a study, an MLflow run or a trained baseline."""

from __future__ import annotations

from pathlib import Path

from autoprune.config import AppConfig
from autoprune.errors import ConfigError
from autoprune.hw import load_profile
from autoprune.hw.backend import check_ready
from autoprune.hw.predictor import LatencyTable
from autoprune.search.fidelity import check_objectives
from autoprune.search.searchers import check_nni
from autoprune.targets import load_targets


def check_search(cfg: AppConfig) -> None:
    """The NNI tuner when search.backend=nni, the allocation's and screening's latency tables, multi-fidelity's
    objectives and latency table, and whether the hardware profile can be measured from here
    (otherwise the search would only fail at the baseline's measurement)."""
    if cfg.search.backend == "nni":
        check_nni(cfg.search.nni.tuner)
    profile = load_profile(cfg.hw)
    allocate = cfg.search.allocate
    if (allocate.budgets or cfg.search.sampler == "allocate") and allocate.table:   # a table for this profile, readable
        LatencyTable.load(Path(allocate.table), profile)
    fidelity = cfg.search.fidelity
    if fidelity.multi:   # rung 0 can rank on these objectives; its latency table is for this profile
        problem = check_objectives(cfg.search.objectives)
        if problem:
            raise ConfigError(problem)
        if fidelity.table:
            LatencyTable.load(Path(fidelity.table), profile)
    screen = cfg.search.screen
    if screen.table and screen.active(profile):
        LatencyTable.load(Path(screen.table), profile)
    check_ready(profile)
    load_targets(cfg.search.also_measure, profile)   # search.also_measure: each measurable from here
