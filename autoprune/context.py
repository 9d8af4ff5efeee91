"""SearchContext: everything a search (or a reproduction) shares, built once from the config.

Cheap inputs are validated before expensive ones, so a typo fails in a second, not after the
baseline has trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from autoprune.baseline import load_baseline
from autoprune.candidate import CandidateEvaluator, build_evaluator
from autoprune.errors import ConfigError
from autoprune.hw import HardwareProfile, Measurer, get_backend, load_profile
from autoprune.prune import PrunableGroup, make_pruner, output_layers
from autoprune.search.space import SearchSpace, load_space
from autoprune.tasks import Task, build_task


@dataclass
class SearchContext:
    cfg: DictConfig
    profile: HardwareProfile
    backend: Measurer
    task: Task
    baseline: nn.Module
    baseline_origin: str
    groups: list[PrunableGroup]
    space: SearchSpace
    evaluator: CandidateEvaluator

    @property
    def study_name(self) -> str:
        """`search.study_name`, or a name derived from everything that makes trials comparable."""
        if self.cfg.search.study_name:
            return str(self.cfg.search.study_name)
        spec = json.dumps([self.task.key, self.profile.digest(), self.space.describe(),
                           OmegaConf.to_container(self.cfg.recover, resolve=True),
                           OmegaConf.to_container(self.cfg.prune, resolve=True),
                           OmegaConf.to_container(self.cfg.search.objectives, resolve=True),
                           OmegaConf.to_container(self.cfg.search.constraints, resolve=True)], sort_keys=True)
        return f"{self.task.name}-{self.profile.name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def build_context(cfg: DictConfig) -> SearchContext:
    profile = load_profile(cfg.hw)
    backend = get_backend(profile, cache_dir=Path(cfg.cache_dir))
    task = build_task(cfg.task)
    baseline, origin = load_baseline(task, Path(cfg.cache_dir))
    example = task.data.example_batch(profile.batch_size)
    try:
        with torch.no_grad():
            baseline(example)
    except Exception as exc:
        raise ConfigError(f"the model rejects inputs of shape {tuple(example.shape)} from the data "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]}): make task.data and task.model agree"
                          ) from None
    ignore = list(dict.fromkeys([*cfg.prune.ignore, *output_layers(baseline, example)]))
    pruner = make_pruner(baseline, example, ignore, profile.round_to)  # channels, or heads/FFN of BERT-style models
    groups = pruner.groups(baseline)
    prune_cfg = OmegaConf.to_container(cfg.prune, resolve=True)
    space = load_space(cfg.search_space, groups, cfg.prune.importance, defaults=prune_cfg)
    evaluator = build_evaluator(prune_cfg, OmegaConf.to_container(cfg.recover, resolve=True), baseline, task.data,
                                pruner, profile, backend)
    return SearchContext(cfg, profile, backend, task, baseline, origin, groups, space, evaluator)
