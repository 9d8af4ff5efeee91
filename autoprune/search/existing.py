"""Open the study and MLflow experiment of a search that already ran (for report, pick, reproduce)."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig, OmegaConf

from autoprune.errors import ConfigError
from autoprune.search.study import find_study, open_storage
from autoprune.track import Tracker


def load_existing(cfg: DictConfig) -> tuple[optuna.Study, Tracker]:
    storage = open_storage(cfg.search.storage)
    study = find_study(storage, cfg.search.storage, cfg.search.study_name)
    return study, Tracker(cfg.tracking.uri, cfg.tracking.experiment)


def study_config(study: optuna.Study) -> DictConfig:
    """The resolved config the study's trials were run with."""
    stored = study.user_attrs.get("config")
    if stored is None:
        raise ConfigError(f"study '{study.study_name}' carries no config (it was not created by autoprune)")
    return OmegaConf.create(stored)
