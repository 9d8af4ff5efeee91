"""Tasks: a model factory, a data factory and how to train the baseline, built from `task=` config."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from autoprune.errors import AutopruneError, ConfigError, first_line
from autoprune.recover.finetune import TrainConfig
from autoprune.tasks.data import DataSplits


@dataclass(frozen=True)
class Task:
    name: str
    make_model: Callable[[], nn.Module]   # a fresh, untrained model
    data: DataSplits
    train: TrainConfig                     # how the baseline is trained when no checkpoint is given
    checkpoint: Optional[Path]
    key: str                               # hash of the task config: keys the baseline cache


def _instantiate(node: Any, what: str) -> Any:
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not target:
        raise ConfigError(f"task.{what}._target_ is missing: set it to an importable factory, e.g. pkg.module.make_{what}")
    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, AutopruneError):  # the factory's own, clearer message
            raise cause from None
        if cause is not None and str(exc).startswith("Error in call to target"):  # it was found and called
            raise ConfigError(f"task.{what}._target_={target} raised {type(cause).__name__}: "
                              f"{first_line(cause)}: {_argument_fix(cause, what)}") from None
        reason = first_line(exc).split(", set env var HYDRA_FULL_ERROR")[0]  # that hint is Hydra's, not ours
        raise ConfigError(f"task.{what}._target_={target} failed: {reason}: set it to an importable class or "
                          f"function (package.module.name) and check its arguments under task.{what}") from None


def _argument_fix(cause: BaseException, what: str) -> str:
    """The override that fixes a factory's argument error (Python's TypeError wording), or where to look."""
    text = str(cause)
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", text)
    if unexpected:
        key = unexpected.group(1)
        return (f"remove the key with ~task.{what}.{key} (or add a {key} argument to the factory); "
                f"every key under task.{what} is passed to it")
    missing = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)", text)
    if missing:
        keys = re.findall(r"'(\w+)'", missing.group(1))
        return "add " + " ".join(f"+task.{what}.{key}=<value>" for key in keys)
    return f"check the keys under task.{what} against the factory's arguments"


def build_task(cfg: Any) -> Task:
    """Instantiate the data once; the model factory is called per baseline build. `cfg`: the `task:`
    section (a TaskConfig, or a composed DictConfig / mapping checked as one)."""
    from autoprune.config import TaskConfig

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = TaskConfig.from_mapping(cfg) if not isinstance(cfg, TaskConfig) else cfg
    model_cfg = cfg.model
    data = DataSplits.coerce(_instantiate(cfg.data, "data"), cfg.data.get("_target_"))

    def make_model() -> nn.Module:
        model = _instantiate(model_cfg, "model")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"task.model._target_={model_cfg['_target_']} returned {type(model).__name__}, not an nn.Module")
        return model

    checkpoint = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else None
    key = hashlib.sha256(json.dumps(cfg.as_mapping(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Task(cfg.name, make_model, data, cfg.train, checkpoint, key)


__all__ = ["DataSplits", "Task", "build_task"]
