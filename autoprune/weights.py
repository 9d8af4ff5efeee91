"""Model weights on disk: state_dicts only, read with `torch.load(weights_only=True)`.

Nothing autoprune reads back from a store (MLflow artifacts, the baseline cache, a checkpoint) is
unpickled as code: a file holds tensors, and the architecture is rebuilt from the baseline and the
trial's logged plan (CandidateEvaluator.rebuild). A file that is not a plain state_dict — a pickled
module, or a crafted payload — is refused with WeightsError instead of being executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from autoprune.errors import WeightsError, first_line


class UnreadableWeights(WeightsError):
    """The file is not a weights-only torch file (corrupt, or a pickle of something else); `cause` names
    the loader's error type."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


class NotAStateDict(WeightsError):
    """The file loads but holds no mapping of names to tensors."""


class WeightsMismatch(WeightsError):
    """The state_dict does not fit the model; `detail` is the first concrete problem."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


def save_weights(model: nn.Module, path: Path) -> Path:
    """Write `model.state_dict()` to `path` atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from `path`, loaded weights-only (no code from the file runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnreadableWeights(f"{Path(path).name} is not a weights-only state_dict ({type(exc).__name__}: "
                           f"{first_line(exc)[:200]}): autoprune only reads files of torch.save(model.state_dict())",
                                type(exc).__name__) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
        raise NotAStateDict(f"{Path(path).name} holds no state_dict (a mapping of names to tensors): "
                           "save it with torch.save(model.state_dict(), path)")
    return dict(state)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """`model.load_state_dict(state)` (strict), with a one-line reason when they do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = mismatch(exc)
        raise WeightsMismatch(f"{what} does not fit the model's architecture ({detail})", detail) from None
    return model


def mismatch(exc: RuntimeError) -> str:
    """The first concrete problem of a load_state_dict error (its first line only names the model class)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
    more = len(lines) - 2
    return (detail[:300].rstrip(".") + ("..." if len(detail) > 300 else "")) + (f" and {more} more" if more > 0 else "")


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor: two models have the same architecture when these agree."""
    return {k: tuple(v.shape) for k, v in state.items()}
