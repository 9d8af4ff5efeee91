"""Command line: `python -m autoprune [mode=search] [hydra overrides...]`.

Errors autoprune can explain (bad config, missing files, unreachable storage) print one line on
stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autoprune.errors import AutopruneError
from autoprune.resources import resource_dir

log = logging.getLogger("autoprune")
MODES = ("search",)


def _quiet_libraries() -> None:
    for name in ("alembic", "mlflow", "optuna", "torch_pruning", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(cfg: DictConfig, output_dir: Path):
    """Run the configured mode; returns the mode's outcome (used by tests and the Python API)."""
    if cfg.mode not in MODES:
        raise AutopruneError(f"unknown mode '{cfg.mode}': choose one of {list(MODES)}")
    from autoprune.search.runner import Search, print_summary

    search = Search(cfg, output_dir)
    outcome = search.run()
    print_summary(outcome, search.tracker.ui_command(), output_dir)
    return outcome


@hydra.main(version_base="1.3", config_path=str(resource_dir("conf")), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    _quiet_libraries()
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
