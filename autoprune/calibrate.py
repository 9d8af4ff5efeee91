"""`python -m autoprune calibrate`: build the latency predictor's table on the target profile for the
task's model at every width the search space can produce, and report its error on random plans."""

from __future__ import annotations

import logging
from pathlib import Path


from autoprune.config import AppConfig
from autoprune.context import build_context
from autoprune.hw.predictor import Calibration, calibrate

log = logging.getLogger("autoprune")


def run_calibrate(cfg: AppConfig, output_dir: Path) -> tuple[Calibration, Path]:
    ctx = build_context(cfg)
    ratios = sorted({round(d.range.low + k * d.range.step, 10) for d in ctx.space.dimensions
                     for k in range(int(round((d.range.high - d.range.low) / d.range.step)) + 1)})
    workdir = Path(output_dir) / "calibrate"
    result = calibrate(ctx.baseline, ctx.evaluator.pruner, ratios, ctx.profile, ctx.backend, workdir,
                       n_validate=cfg.calibrate.n_validate, seed=cfg.seed)
    path = Path(cfg.calibrate.table) if cfg.calibrate.table else workdir / "latency_table.json"
    result.table.save(path)
    return result, path
