"""SearchContext: everything a search (or a reproduction) shares, built once from the config.

Cheap inputs are validated before expensive ones, so a typo fails in a second, not after the
baseline has trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from autoprune.baseline import load_baseline, needs_training
from autoprune.candidate import CandidateEvaluator, build_evaluator
from autoprune.config import AppConfig
from autoprune.errors import ConfigError, ExportError, first_line
from autoprune.hw import HardwareProfile, Measurer, export_onnx, get_backend, load_profile
from autoprune.preflight import PreflightReport, bounded_output_layers, run_preflight
from autoprune.prune import PrunableGroup, make_pruner, output_layers
from autoprune.schema import to_plain
from autoprune.search.space import RatioRange, SearchSpace, load_space
from autoprune.targets import load_targets
from autoprune.tasks import Task, build_task

log = logging.getLogger("autoprune")


@dataclass
class SearchContext:
    cfg: AppConfig
    profile: HardwareProfile
    backend: Measurer
    task: Task
    baseline: nn.Module
    baseline_origin: str
    groups: list[PrunableGroup]
    space: SearchSpace
    evaluator: CandidateEvaluator
    preflight: Optional[PreflightReport] = None

    @property
    def study_name(self) -> str:
        """`search.study_name`, or a name derived from everything that makes trials comparable."""
        if self.cfg.search.study_name:
            return self.cfg.search.study_name
        constraints = to_plain(self.cfg.search.constraints)
        if constraints.get("max_accuracy_drop", 0) is None:  # added later: studies that don't set it keep their names
            del constraints["max_accuracy_drop"]
        spec = json.dumps([self.task.key, self.profile.digest(), self.space.describe(),
                           to_plain(self.cfg.recover),
                           self.cfg.prune.searched(),
                           list(self.cfg.search.objectives),
                           constraints], sort_keys=True)
        return f"{self.task.name}-{self.profile.name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class CheckedInputs:
    """Step one of building a context: profile, backend and task, with the model (when the baseline is
    still to be trained: the untrained one) already through the checks and the pre-flight."""

    cfg: AppConfig
    profile: HardwareProfile
    backend: Measurer
    task: Task
    trains: bool
    preflight: Optional[PreflightReport]


def check_inputs(cfg: AppConfig) -> CheckedInputs:
    """Everything cheap, checked: when the baseline is to be trained (no checkpoint, nothing cached), the
    untrained model goes through the same checks first, so a bad model, importance or search space fails
    in seconds instead of after training. A composed DictConfig is checked and typed first (AppConfig.of)."""
    cfg = AppConfig.of(cfg)
    profile = load_profile(cfg.hw)
    backend = get_backend(profile, cache_dir=Path(cfg.cache_dir))
    task = build_task(cfg.task)
    trains = needs_training(task, Path(cfg.cache_dir))
    preflight = None
    if trains:
        *_, preflight = _assemble(cfg, profile, backend, task, task.make_model().eval(), check_export=True)
    return CheckedInputs(cfg, profile, backend, task, trains, preflight)


def finish_context(inputs: CheckedInputs) -> SearchContext:
    """Step two: load (or train) the baseline and assemble groups, space and evaluator around it."""
    cfg, profile, backend, task = inputs.cfg, inputs.profile, inputs.backend, inputs.task
    baseline, origin = load_baseline(task, Path(cfg.cache_dir))
    groups, space, evaluator, checked = _assemble(cfg, profile, backend, task, baseline,
                                                  check_export=not inputs.trains, preflight=inputs.preflight)
    return SearchContext(cfg, profile, backend, task, baseline, origin, groups, space, evaluator, checked)


def build_context(cfg: AppConfig) -> SearchContext:
    """Build everything a search shares (a search opens its storage and tracker between the two steps)."""
    return finish_context(check_inputs(cfg))


def _assemble(cfg: AppConfig, profile: HardwareProfile, backend: Measurer, task: Task, model: nn.Module,
              check_export: bool, preflight: Optional[PreflightReport] = None
              ) -> tuple[list[PrunableGroup], SearchSpace, CandidateEvaluator, Optional[PreflightReport]]:
    """Groups, search space and evaluator for `model`, after checking it takes the data's inputs (and,
    with `check_export`, exports to ONNX and passes the pre-flight: once per context). Nothing here
    depends on the weights, so an untrained model checks it all. The pre-flight's excluded groups
    leave the search space; a group that failed a higher tested ratio is searched up to the highest
    that passed."""
    example = task.data.example_batch(profile.batch_size)
    _check_profile_shape(profile, example)
    _check_inputs(model, example)
    if check_export:
        _check_exportable(model, example)
    checked = check_export and cfg.prune.preflight
    outputs = (bounded_output_layers(model, example, cfg.prune.preflight_timeout_s) if checked
               else output_layers(model, example))
    ignore = list(dict.fromkeys([*cfg.prune.ignore, *outputs]))
    pruner = make_pruner(model, example, ignore, profile.round_to)  # channels, or heads/FFN of BERT-style models
    if check_export and preflight is None and cfg.prune.preflight:
        preflight = run_preflight(model, example, pruner, timeout_s=cfg.prune.preflight_timeout_s,
                                  memory_mb=cfg.prune.preflight_memory_mb)
        for line in preflight.lines():
            log.info("%s", line)
    groups = pruner.groups(model)
    space = load_space(cfg.search_space, groups, cfg.prune.importance, defaults=cfg.prune.searched())
    if preflight is not None:
        space = _feasible(space, preflight)
    also = load_targets(cfg.search.also_measure, profile, Path(cfg.cache_dir), check=False)  # checked by check_search
    evaluator = build_evaluator(cfg.prune, cfg.recover, model, task.data, pruner, profile, backend, also)
    return groups, space, evaluator, preflight


def _feasible(space: SearchSpace, report: PreflightReport) -> SearchSpace:
    """`space` without the groups the pre-flight excluded, each group's ratio capped at the highest it passed."""
    excluded, limited = report.excluded, report.limited
    dims = []
    for d in space.dimensions:
        members = tuple(g for g in d.groups if g not in excluded)
        if not members:
            continue
        cap = min((limited[g] for g in members if g in limited), default=None)
        if cap is not None and cap < d.range.high:
            r = d.range
            high = max(r.low, round(r.low + math.floor((cap - r.low) / r.step + 1e-9) * r.step, 10))
            d = dataclasses.replace(d, range=RatioRange(r.low, high, r.step))
        dims.append(dataclasses.replace(d, groups=members))
    return dataclasses.replace(space, dimensions=tuple(dims))


def _check_profile_shape(profile: HardwareProfile, example: torch.Tensor) -> None:
    """Candidates are exported at the data's sample shape (only the batch is dynamic): a profile that
    times another shape could not feed them."""
    sample = tuple(example.shape[1:])
    if profile.input_shape is not None and tuple(profile.input_shape) != sample:
        raise ConfigError(f"hardware profile '{profile.name}' has input_shape {list(profile.input_shape)} but the "
                          f"task's samples are {list(sample)}: models are exported and timed at the data's shape, "
                          f"so remove input_shape from the profile or set it to {list(sample)}")


def _check_inputs(model: nn.Module, example: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        raise ConfigError(f"the model rejects inputs of shape {tuple(example.shape)} from the data "
                          f"({type(exc).__name__}: {first_line(exc)}): make task.data and task.model agree"
                          ) from None


def _check_exportable(model: nn.Module, example: torch.Tensor) -> None:
    """Every candidate is timed as an ONNX model: a model that does not export could never be measured."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_onnx(model, example, Path(tmp) / "model.onnx")
        except ExportError as exc:
            reason = first_line(exc.__cause__ or exc)
            raise ConfigError(f"task.model does not export to ONNX ({reason}): autoprune times every candidate "
                              "as an ONNX model, so replace that layer or operation with exportable ones") from None
