"""Experiment tracking (MLflow)."""

from autoprune.track.mlflow_tracker import Tracker

__all__ = ["Tracker"]
