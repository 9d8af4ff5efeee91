"""autoprune: hardware-aware pruning search. Run `python -m autoprune --help`."""

from autoprune.errors import AutopruneError, ConfigError, ExportError, MeasurementError, ProfileError, PruningError
from autoprune.hw import HardwareProfile, LatencyStats, load_profile
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.tasks.data import DataSplits, Preprocessing

__version__ = "0.1.0"

__all__ = [
    "AutopruneError", "ConfigError", "DataSplits", "ExportError", "GroupPlan", "HardwareProfile", "LatencyStats",
    "MeasurementError", "Preprocessing", "ProfileError", "PrunePlan", "PruningError", "load_profile",
]
