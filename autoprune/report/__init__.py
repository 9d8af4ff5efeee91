"""Pareto reports: console table, CSV/JSON, PNG figures and a self-contained HTML page."""

from autoprune.report.collect import Candidate, ReportData, collect
from autoprune.report.pareto_report import format_table, write_report

__all__ = ["Candidate", "ReportData", "collect", "format_table", "write_report"]
