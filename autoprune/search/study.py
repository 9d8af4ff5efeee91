"""Open (or resume) the Optuna study behind a search; storage is any SQLAlchemy URL."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import optuna
from sqlalchemy.engine import make_url

from autoprune.errors import ConfigError, few, first_line

def _check_storage(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"search.storage '{url}' is not a SQLAlchemy URL: use e.g. sqlite:///autoprune.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return url


def open_storage(url: str, heartbeat_s: Optional[int] = None,
                 on_stale: Optional[Callable] = None) -> optuna.storages.BaseStorage:
    """Connect to the Optuna storage (creating its tables); fails fast with a one-line reason.
    With `heartbeat_s`, running trials silent for 4 heartbeats are failed and passed to `on_stale`."""
    url = _check_storage(url)
    try:
        if heartbeat_s:
            return optuna.storages.RDBStorage(url, heartbeat_interval=int(heartbeat_s),
                                              grace_period=4 * int(heartbeat_s),
                                              heartbeat_stale_trial_callback=on_stale)
        return optuna.storages.get_storage(url)
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(f"cannot open search.storage '{url}': {first} (start the database server or fix "
                          "search.storage, e.g. search.storage=sqlite:///autoprune.db)") from None


def open_study(storage: optuna.storages.BaseStorage, study_name: str, sampler: optuna.samplers.BaseSampler,
               directions: list[str]) -> optuna.Study:
    """Create the study, or load it when it exists (this is what makes a re-run resume)."""
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study '{study_name}' has other objectives: set search.study_name to a new name")
    return study


def find_study(storage: optuna.storages.BaseStorage, url: str, study_name: str | None) -> optuna.Study:
    """The study named `study_name`, or the only study in the storage when no name is given."""
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"{len(names)} studies in {url} ({few(names)}): choose one with search.study_name=<name>"
                              if names else f"no study in {url}: run a search first or fix search.storage")
        study_name = names[0]
    elif study_name not in names:
        raise ConfigError(f"no study '{study_name}' in {url}: set search.study_name to one of {few(names)}"
                          if names else f"no study '{study_name}' in {url}: run a search first or fix search.storage")
    return optuna.load_study(study_name=study_name, storage=storage)
