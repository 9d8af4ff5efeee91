"""The unpruned baseline: loaded from a checkpoint, or trained once and cached by the task's key."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sized, cast

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from autoprune.errors import ConfigError
from autoprune.recover.finetune import train
from autoprune.tasks import Task
from autoprune.weights import NotAStateDict, UnreadableWeights, WeightsMismatch, load_into, load_weights, save_weights

log = logging.getLogger(__name__)


def _load_state(model: nn.Module, path: Path) -> None:
    """A checkpoint or cached baseline into `model`, weights-only (autoprune.weights), with messages that
    name task.checkpoint / task.model."""
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (fix task.checkpoint or remove it to train a baseline)")
    try:
        load_into(model, load_weights(path), f"checkpoint {path}")
    except UnreadableWeights as exc:
        raise ConfigError(f"checkpoint {path} cannot be read ({exc.cause}): "
                          "save it with torch.save(model.state_dict(), path)") from None
    except NotAStateDict:
        raise ConfigError(f"checkpoint {path} holds no state_dict: save it with torch.save(model.state_dict(), path)"
                          ) from None
    except WeightsMismatch as exc:
        raise ConfigError(f"checkpoint {path} does not fit task.model ({exc.detail}): use a checkpoint "
                          "of this architecture, or set task.model to the one it was saved from") from None


def cached_path(task: Task, cache_dir: Path) -> Path:
    """Where the trained baseline of `task` is cached (keyed by the task config)."""
    return Path(cache_dir) / "baselines" / f"{task.name}-{task.key}.pt"


def needs_training(task: Task, cache_dir: Path) -> bool:
    """True when load_baseline will train (no checkpoint, nothing cached): the expensive case, before
    which callers validate everything cheap."""
    return task.checkpoint is None and not cached_path(task, cache_dir).is_file()


def load_baseline(task: Task, cache_dir: Path) -> tuple[nn.Module, str]:
    """Return (trained baseline in eval mode, where it came from)."""
    torch.manual_seed(task.train.seed)
    model = task.make_model()
    if task.checkpoint is not None:
        _load_state(model, task.checkpoint)
        return model.eval(), f"checkpoint {task.checkpoint}"
    cached = cached_path(task, cache_dir)
    if cached.is_file():
        _load_state(model, cached)
        return model.eval(), f"cache {cached}"
    log.info("training the baseline: %d epochs on %d samples (cached afterwards in %s)",
             task.train.epochs, len(cast(Sized, task.data.train)), cached)
    train(model, task.data.train, task.train,
          on_epoch=lambda e, _: log.info("baseline epoch %d/%d", e + 1, task.train.epochs))
    save_weights(model, cached)  # atomic: a crash (or a worker training the same baseline) never leaves half a file
    return model.eval(), f"trained, cached in {cached}"


def chance_level(data: Dataset) -> tuple[float, int]:
    """(accuracy of always answering the most frequent label, number of classes) on `data`."""
    counts = Counter(int(label) for _, label in cast(Iterable, data))
    total = sum(counts.values())
    return (max(counts.values()) / total if total else 0.0), len(counts)


def near_chance(val_accuracy: float, val: Dataset, origin: str) -> Optional[str]:
    """A warning when the baseline's validation accuracy is within a tenth of the way from chance level to
    100 %: pruning a model that has not learned measures nothing. None otherwise."""
    chance, classes = chance_level(val)
    if classes < 2 or val_accuracy >= chance + 0.1 * (1.0 - chance):
        return None
    how = ("check the weights in task.checkpoint (and that they belong to this task.model and data)"
           if origin.startswith("checkpoint") else
           "train it longer or better (task.train.epochs, task.train.lr, task.train.batch_size) or give trained "
           "weights with task.checkpoint")
    return (f"the baseline ({origin}) reaches {100 * val_accuracy:.1f}% val accuracy, near chance level "
            f"({100 * chance:.1f}% with {classes} classes): the search would prune a model that has not learned; {how}")
