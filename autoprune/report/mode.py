"""`python -m autoprune report`: rebuild the report of a search from its Optuna study and MLflow alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import optuna

from autoprune.config import AppConfig
from autoprune.deploy import write_bundle
from autoprune.report.collect import collect
from autoprune.report.pareto_report import write_report
from autoprune.report.recommend import SPLIT_SIZES, SplitSizes
from autoprune.search.existing import load_existing

log = logging.getLogger("autoprune")


def split_sizes(study: optuna.Study) -> Optional[SplitSizes]:
    """The validation / test split sizes the search recorded with the study (data, never a factory to
    rerun: stored configs are not executed); None for studies of before, whose report has no intervals."""
    stored: Any = study.user_attrs.get(SPLIT_SIZES)   # None (older study): TypeError below
    try:
        return SplitSizes(int(stored["val"]), int(stored["test"]))
    except (TypeError, KeyError, ValueError):
        log.warning("report without accuracy intervals: study '%s' has no recorded split sizes", study.study_name)
        return None


def run_report(cfg: AppConfig, output_dir: Path):
    """The report of one study (on report.target, default its own profile): (ReportData, files); with
    report.studies, the overlay of their fronts: (list of overlay.Front, files)."""
    report = cfg.report
    if report.studies:
        from autoprune.report.overlay import collect_fronts, write_overlay
        from autoprune.search.study import open_storage
        from autoprune.track import Tracker

        fronts = collect_fronts(open_storage(cfg.search.storage), cfg.search.storage,
                                Tracker(cfg.tracking.uri, cfg.tracking.experiment), list(report.studies),
                                cfg.search.hv_max_drop)
        return fronts, write_overlay(fronts, Path(output_dir) / "report")
    study, tracker = load_existing(cfg)
    data = collect(study, tracker, cfg.search.hv_max_drop, report.target)
    files = write_report(data, Path(output_dir) / "report", split_sizes(study))
    write_bundle(data, tracker, Path(output_dir) / "report")
    if report.recheck_rounds:
        files.append(_recheck(data, cfg, Path(output_dir) / "report"))
    return data, files


def _recheck(data, cfg: AppConfig, folder: Path) -> Path:
    """Re-time the bundled front models side by side (autoprune.report.recheck); prints and writes recheck.csv."""
    from autoprune.report.recheck import format_recheck, recheck, target_profile, write_recheck

    bundled = [(c.label, folder / "models" / f"trial-{c.trial:04d}.onnx", c.latency_ms) for c in data.front]
    models = [m for m in bundled if m[1].is_file()]
    rows = recheck(models, target_profile(cfg.hw, data.target), cfg.report.recheck_rounds, cfg.seed)
    print(format_recheck(rows))
    return write_recheck(rows, folder / "recheck.csv")
