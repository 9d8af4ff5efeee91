"""`python -m autoprune report`: rebuild the report of a search from its Optuna study and MLflow alone."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from autoprune.deploy import write_bundle
from autoprune.report.collect import ReportData, collect
from autoprune.report.pareto_report import write_report
from autoprune.search.existing import load_existing


def run_report(cfg: DictConfig, output_dir: Path) -> tuple[ReportData, list[Path]]:
    study, tracker = load_existing(cfg)
    data = collect(study, tracker, float(cfg.search.hv_max_drop))
    files = write_report(data, Path(output_dir) / "report")
    write_bundle(data, tracker, Path(output_dir) / "report")
    return data, files
