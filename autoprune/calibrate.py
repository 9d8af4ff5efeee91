"""`python -m autoprune calibrate`: build the latency predictor's table on the target profile for the
task's model at every width the search space can produce, and report its error on random plans.

The table (autoprune.hw.predictor) knows layer shapes and widths only; this module joins it to the
pruner: it finds which group sets each layer's widths (`layer_specs`, by pruning probes), and it prunes,
exports and measures the whole models the table's correction is fitted to and checked against.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from autoprune.config import AppConfig
from autoprune.context import build_context
from autoprune.errors import ConfigError
from autoprune.hw import HardwareProfile, LatencyBackend, export_model
from autoprune.hw.predictor import (LatencyTable, LayerSpec, PredictorReport, build_table, input_shapes, layer_spec,
                                    module_shapes, random_plans, validate, width_options)
from autoprune.plan import PrunePlan, kept_channels
from autoprune.prune.engine import StructuralPruner

log = logging.getLogger("autoprune")


def layer_specs(model: nn.Module, pruner: StructuralPruner) -> list[LayerSpec]:
    """Every Conv/Linear layer the example input reaches, with the groups that set its widths (found by
    pruning a copy one group at a time and seeing which layers change)."""
    base = module_shapes(model)
    inputs = input_shapes(model, pruner.example_input)
    in_group: dict[str, str] = {}
    out_group: dict[str, str] = {}
    for group in pruner.groups(model):
        if kept_channels(group.channels, 0.5, pruner.round_to) >= group.channels:
            continue  # too narrow to prune at this round_to: its layers keep their width
        probe = copy.deepcopy(model)
        pruner.apply(probe, PrunePlan.uniform([group.name], 0.5))
        for name, (c_in, c_out) in module_shapes(probe).items():
            if name not in base:   # a layer pruning created (an nn.MultiheadAttention's fused twin): not timed
                continue
            if c_in != base[name][0]:
                in_group[name] = group.name
            if c_out != base[name][1]:
                out_group[name] = group.name
    modules = dict(model.named_modules())
    return [layer_spec(name, modules[name], inputs[name], in_group.get(name), out_group.get(name))
            for name in base if name in inputs]   # layers not used in the forward pass are left out


def group_widths(pruner: StructuralPruner, model: nn.Module) -> dict[str, int]:
    """Unpruned width of every prunable group."""
    return {g.name: g.channels for g in pruner.groups(model)}


def group_options(pruner: StructuralPruner, model: nn.Module, ratios: Sequence[float]) -> dict[str, list[int]]:
    """The widths each group can take under `ratios` and the pruner's round_to."""
    return width_options(group_widths(pruner, model), ratios, pruner.round_to)


def measure_plan(model: nn.Module, pruner: StructuralPruner, plan: PrunePlan, profile: HardwareProfile,
                 backend: LatencyBackend, workdir: Path) -> float:
    """Median latency (ms) of `model` pruned by `plan`, exported and measured on `profile`."""
    pruned = pruner.apply(copy.deepcopy(model), plan)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return backend.measure(export_model(pruned, pruner.example_input, Path(tmp)), profile).median_ms


@dataclass(frozen=True)
class Calibration:
    table: LatencyTable
    report: PredictorReport


def calibrate(model: nn.Module, pruner: StructuralPruner, ratios: Sequence[float], profile: HardwareProfile,
              backend: LatencyBackend, workdir: Path, *, n_validate: int = 8, seed: int = 0,
              reference_ratios: Sequence[float] | None = None) -> Calibration:
    """Build the table for `model` on `profile` (through `backend`, so a profile with an agent_url
    calibrates on the device): time every layer alone at every width pair `ratios` can produce, fit the
    correction on whole models pruned uniformly at `reference_ratios` (default: 4 spread over `ratios`),
    and report the error on `n_validate` random plans. `pruner` must be the search's (same example input,
    ignored layers and round_to)."""
    if pruner.round_to != profile.round_to:
        raise ConfigError(f"pruner.round_to ({pruner.round_to}) differs from profile '{profile.name}' round_to "
                          f"({profile.round_to}): build the pruner with the profile's round_to")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ratios = sorted({float(r) for r in ratios})
    groups = group_widths(pruner, model)
    table = build_table(layer_specs(model, pruner), groups, width_options(groups, ratios, pruner.round_to),
                        profile, backend, workdir)
    if reference_ratios is None:
        reference_ratios = [ratios[round(i * (len(ratios) - 1) / 3)] for i in range(4)] if len(ratios) > 1 else ratios
    plans = [PrunePlan.uniform(list(groups), r) for r in sorted(set(reference_ratios))]
    table.fit([table.group_widths(p) for p in plans],
              [measure_plan(model, pruner, p, profile, backend, workdir) for p in plans])
    checks = random_plans(list(groups), ratios, n_validate, seed)
    report = validate(table, checks, lambda p: measure_plan(model, pruner, p, profile, backend, workdir))
    return Calibration(table, report)


def space_ratios(space) -> list[float]:
    """Every ratio the search space's dimensions can take."""
    return sorted({round(d.range.low + k * d.range.step, 10) for d in space.dimensions
                   for k in range(int(round((d.range.high - d.range.low) / d.range.step)) + 1)})


def run_calibrate(cfg: AppConfig, output_dir: Path) -> tuple[Calibration, Path]:
    ctx = build_context(cfg)
    workdir = Path(output_dir) / "calibrate"
    result = calibrate(ctx.baseline, ctx.evaluator.pruner, space_ratios(ctx.space), ctx.profile, ctx.backend, workdir,
                       n_validate=cfg.calibrate.n_validate, seed=cfg.seed)
    path = Path(cfg.calibrate.table) if cfg.calibrate.table else workdir / "latency_table.json"
    result.table.save(path)
    return result, path
