"""Open the study and MLflow experiment of a search that already ran (for report, pick, reproduce).

A study's stored config is *data*: anyone who can write to a shared storage can change it, so it is
never instantiated as it stands. Every `_target_` in it must be autoprune's own or one the user gave
in this command's own config (`task.model._target_=pkg.Net` on the command line); anything else —
`pandas.read_pickle` with a URL, `os.system` — is refused before a single import.
"""

from __future__ import annotations

from typing import Any, Iterator

import optuna

from autoprune.config import AppConfig
from autoprune.errors import ConfigError
from autoprune.search.study import find_study, open_storage
from autoprune.track import Tracker

OWN_TARGETS = "autoprune."   # the project's own factories (tasks.zoo, tasks.models, tasks.data ...)


def load_existing(cfg: AppConfig) -> tuple[optuna.Study, Tracker]:
    storage = open_storage(cfg.search.storage)
    study = find_study(storage, cfg.search.storage, cfg.search.study_name)
    name_objectives(study)
    return study, Tracker(cfg.tracking.uri, cfg.tracking.experiment)


def name_objectives(study: optuna.Study) -> None:
    """Give a study without metric names (its last search ran before autoprune set them, so optuna-dashboard
    shows its objectives as "0" / "1") the names of its stored config's `search.objectives`. A search sets
    them itself, on new and resumed studies alike (autoprune.search.runner)."""
    if study.metric_names is not None:
        return
    stored = study.user_attrs.get("config")
    names = stored.get("search", {}).get("objectives") if isinstance(stored, dict) else None
    if isinstance(names, list) and len(names) == len(study.directions) and all(isinstance(n, str) for n in names):
        study.set_metric_names(names)


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain container tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else str(key)
            if key == "_target_":   # whatever it holds, it is checked as one value
                yield dotted, value
            else:
                yield from _leaves(value, dotted)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, node


def _targets(node: Any) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every `_target_` in a plain container tree."""
    return ((key, value) for key, value in _leaves(node) if key.rsplit(".", 1)[-1] == "_target_")


def study_config(study: optuna.Study, cli: AppConfig) -> AppConfig:
    """The resolved config the study's trials were run with, checked against the allow-list: every
    `_target_` is autoprune's own or one this command's config (`cli`, composed from the command line)
    names too. The stored config was saved resolved, so it holds no interpolation either. It is typed
    and checked like the command's own; keys a later version dropped are ignored, missing ones default."""
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise ConfigError(f"study '{study.study_name}' carries no config (it was not created by autoprune)")
    trusted = {value for _, value in _targets(AppConfig.of(cli).to_dict())}
    for key, target in _targets(stored):
        if not isinstance(target, str) or not (target.startswith(OWN_TARGETS) or target in trusted):
            shown = repr(target)[:120]
            raise ConfigError(f"study '{study.study_name}' names {key}={shown}, which is neither autoprune's nor "
                              f"given in this command: stored configs are not trusted to run code; if you trust "
                              f"it, add {key}={target if isinstance(target, str) else '<factory>'} to the command")
    for key in (key for key, value in _leaves(stored) if isinstance(value, str) and "${" in value):
        raise ConfigError(f"study '{study.study_name}' has an interpolation at {key} in its stored config "
                          "(autoprune stores configs resolved): the storage was changed by hand; refusing it")
    return AppConfig.of(stored, lenient=True)
