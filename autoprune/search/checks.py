"""Checks of a search's settings that need no model: run first, so that a mistake fails in seconds
and before the search creates a study, an MLflow run or a trained baseline."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from autoprune.errors import ConfigError
from autoprune.hw import load_profile
from autoprune.hw.backend import check_ready
from autoprune.recover import RecoverConfig
from autoprune.search.searchers import check_nni
from autoprune.targets import load_targets


def check_search(cfg: DictConfig) -> None:
    """Warm-start ratios, the NNI tuner when search.backend=nni, and whether the hardware profile can
    be measured from here (otherwise the search would only fail at the baseline's measurement)."""
    for ratio in cfg.search.warm_start or []:
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
            raise ConfigError(f"search.warm_start ratio {ratio!r} is outside [0, 1): give pruning ratios such as "
                              "search.warm_start=[0.25,0.5] (or [] for none)")
    if cfg.search.get("resume", "auto") not in ("auto", "force"):
        raise ConfigError(f"search.resume={cfg.search.resume!r}: use auto (resume a study only with the same "
                          "settings) or force (resume it whatever changed)")
    if cfg.search.backend == "nni":
        check_nni(str(cfg.search.nni.tuner))
    RecoverConfig.coerce(OmegaConf.to_container(cfg.recover, resolve=True))   # recover.lr=-1 & co: before any trial
    profile = load_profile(cfg.hw)
    check_ready(profile)
    load_targets(cfg.search.get("also_measure"), profile)   # search.also_measure: each measurable from here
