"""`python -m autoprune report`: rebuild the report of a search from its Optuna study and MLflow alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import optuna
from omegaconf import DictConfig

from autoprune.deploy import write_bundle
from autoprune.errors import AutopruneError
from autoprune.report.collect import ReportData, collect
from autoprune.report.pareto_report import write_report
from autoprune.report.recommend import SplitSizes
from autoprune.search.existing import load_existing, study_config

log = logging.getLogger("autoprune")


def split_sizes(study: optuna.Study) -> Optional[SplitSizes]:
    """The validation / test split sizes of the study's task (its data factory is rerun; None if that fails)."""
    from autoprune.tasks import build_task

    try:
        return SplitSizes.of(build_task(study_config(study).task).data)
    except AutopruneError as exc:
        log.warning("report without accuracy intervals: the task's data cannot be loaded (%s)", exc)
        return None


def run_report(cfg: DictConfig, output_dir: Path) -> tuple[ReportData, list[Path]]:
    study, tracker = load_existing(cfg)
    data = collect(study, tracker, float(cfg.search.hv_max_drop))
    files = write_report(data, Path(output_dir) / "report", split_sizes(study))
    write_bundle(data, tracker, Path(output_dir) / "report")
    return data, files
