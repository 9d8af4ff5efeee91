"""The unpruned baseline: loaded from a checkpoint, or trained once and cached by the task's key."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.errors import ConfigError
from autoprune.recover.finetune import train
from autoprune.tasks import Task

log = logging.getLogger(__name__)


def _load_state(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (fix task.checkpoint or remove it to train a baseline)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"checkpoint {path} cannot be read ({type(exc).__name__}): "
                          "save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} holds no state_dict: save it with torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"checkpoint {path} does not fit task.model ({first}): "
                          "use the checkpoint of this architecture") from None


def load_baseline(task: Task, cache_dir: Path) -> tuple[nn.Module, str]:
    """Return (trained baseline in eval mode, where it came from)."""
    torch.manual_seed(task.train.seed)
    model = task.make_model()
    if task.checkpoint is not None:
        _load_state(model, task.checkpoint)
        return model.eval(), f"checkpoint {task.checkpoint}"
    cached = Path(cache_dir) / "baselines" / f"{task.name}-{task.key}.pt"
    if cached.is_file():
        _load_state(model, cached)
        return model.eval(), f"cache {cached}"
    log.info("training the baseline: %d epochs on %d samples (cached afterwards in %s)",
             task.train.epochs, len(task.data.train), cached)
    train(model, task.data.train, task.train,
          on_epoch=lambda e, _: log.info("baseline epoch %d/%d", e + 1, task.train.epochs))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")  # workers may train the same baseline at once
    torch.save(model.state_dict(), tmp)
    tmp.replace(cached)  # atomic: a crash never leaves a half-written cache entry
    return model.eval(), f"trained, cached in {cached}"
