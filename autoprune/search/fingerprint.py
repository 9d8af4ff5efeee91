"""What defines a study, so that resuming it with something else fails instead of mixing trials.

A study's trials are comparable only if they share the task (model, data, how the baseline is
trained), the hardware profile, the search space, the objectives and constraints, and how candidates
are pruned and recovered. The default study name hashes all of that, so a change starts a new study;
an explicit `search.study_name` does not, so the study stores a fingerprint — one short hash per part
— and a resume with a different one is refused, naming what changed, unless `search.resume=force`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import optuna

from autoprune.config import PREFLIGHT_KEYS, AppConfig
from autoprune.errors import ConfigError
from autoprune.resources import resolve_yaml
from autoprune.schema import to_plain

ATTR = "fingerprint"
# part -> the config keys it covers (named in the error)
PARTS = {"model": "task.model", "data": "task.data", "baseline": "task.train / task.checkpoint",
         "hw": "hw (the hardware profile)", "search_space": "search_space", "objectives": "search.objectives",
         "constraints": "search.constraints", "prune": "prune", "recover": "recover"}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_fingerprint(cfg: AppConfig, profile_digest: str) -> dict[str, str]:
    """One hash per part of the config that defines a study (see PARTS), over the values as given."""
    cfg = AppConfig.of(cfg)
    task = cfg.task.as_mapping()
    space = resolve_yaml("search_spaces", cfg.search_space)
    return {
        "model": _digest(task.get("model")),
        "data": _digest(task.get("data")),
        "baseline": _digest([task.get("train"), task.get("checkpoint")]),
        "hw": profile_digest,
        "search_space": _digest(space.read_text()),
        "objectives": _digest(list(cfg.search.objectives)),
        "constraints": _digest(cfg.search.constraints.bounds()),
        "prune": _digest({k: v for k, v in to_plain(cfg.prune).items() if k not in PREFLIGHT_KEYS}),
        "recover": _digest(to_plain(cfg.recover)),
    }


def stored_fingerprint(storage: optuna.storages.BaseStorage, study_name: str) -> dict | None:
    """The fingerprint stored with study `study_name`, None when there is no such study (or none stored)."""
    try:
        study_id = storage.get_study_id_from_name(str(study_name))
    except KeyError:
        return None
    stored = storage.get_study_user_attrs(study_id).get(ATTR)
    return stored if isinstance(stored, dict) else None


def check_fingerprint(study_name: str, stored: Mapping[str, str] | None, current: Mapping[str, str],
                      force: bool) -> None:
    """Raise ConfigError naming what changed since the study was created (unless `force`)."""
    if not stored or force:
        return
    changed = [PARTS.get(part, part) for part in current if part in stored and stored[part] != current[part]]
    if changed:
        raise ConfigError(f"study '{study_name}' was run with a different {', '.join(changed)}: resuming it would mix "
                          "incompatible trials in one front; pick a new search.study_name (or drop it for a name "
                          "derived from the config), or add search.resume=force to mix them anyway")
