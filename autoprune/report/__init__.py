"""Pareto reports: console table, CSV, PNG and a self-contained HTML page."""

from autoprune.report.pareto_report import Candidate, format_table, write_report

__all__ = ["Candidate", "format_table", "write_report"]
