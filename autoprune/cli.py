"""Command line: `python -m autoprune [MODE] [hydra overrides...]`.

MODE is `search` (default), `report`, `pick`, `reproduce`, `calibrate` or `sensitivity` (same as
`mode=<MODE>`), or `agent` (the remote measurement agent; `python -m autoprune agent --help`).
`--help` lists the modes, profiles and search spaces; `<MODE> --help` gives that mode's keys
(autoprune.usage). Errors autoprune can explain (bad config, missing files, unreachable storage)
print one line on stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autoprune.config import MODES, AppConfig

from autoprune import interrupts
from autoprune.errors import AutopruneError
from autoprune.overrides import check_overrides
from autoprune.resources import resource_dir
from autoprune.usage import help_for, help_requested, is_mode_word, unknown_mode

log = logging.getLogger("autoprune")


def _quiet_libraries() -> None:
    for name in ("alembic", "mlflow", "optuna", "torch_pruning", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # autoprune drives heartbeats itself with ask/tell (autoprune.search.workers), on purpose
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def run(cfg: DictConfig | AppConfig, output_dir: Path):
    """Run the configured mode and print its summary; returns the mode's outcome (tests, Python API).
    The config is checked and typed here, once (autoprune.config); every layer below reads the AppConfig."""
    cfg = AppConfig.of(cfg)
    cfg.check_files()
    output_dir = Path(output_dir)
    if cfg.mode == "search":
        from autoprune.search.runner import Search, print_summary

        search = Search(cfg, output_dir)
        outcome = search.run()
        print_summary(outcome.report, search.tracker.ui_command(), output_dir / "report")
        return outcome
    if cfg.mode == "report":
        from autoprune.report.mode import run_report
        from autoprune.search.runner import print_summary

        data, files = run_report(cfg, output_dir)
        if isinstance(data, list):   # report.studies: several fronts overlaid
            from autoprune.report.overlay import format_overlay

            print(format_overlay(data))
            print(f"\noverlay:   {files[-1]}")
        else:
            print_summary(data, f"mlflow ui --backend-store-uri {cfg.tracking.uri}", files[0].parent)
        return data, files
    if cfg.mode == "pick":
        from autoprune.pick import run_pick

        picked = run_pick(cfg)
        done = "reused" if picked.reused else "registered"
        print(f"{done} {picked.model_name} version {picked.version} with alias '{picked.alias}' "
              f"(trial {picked.chosen.trial}); ONNX exported to {picked.onnx_path}\n"
              f"serve it: PATH=.venv/bin:$PATH MLFLOW_TRACKING_URI={cfg.tracking.uri} "
              f"mlflow models serve -m 'models:/{picked.model_name}@{picked.alias}' --env-manager local -p 5001")
        return picked
    if cfg.mode == "reproduce":
        from autoprune.reproduce import run_reproduce

        reproduced = run_reproduce(cfg, output_dir)
        print(f"trial {reproduced.trial}: logged vs reproduced now")
        print(reproduced.table())
        return reproduced
    if cfg.mode == "calibrate":
        from autoprune.calibrate import run_calibrate

        result, path = run_calibrate(cfg, output_dir)
        print(result.report.summary())
        print(f"latency table: {path}")
        return result, path
    if cfg.mode == "sensitivity":
        from autoprune.sensitivity import run_sensitivity

        sensitivity = run_sensitivity(cfg, output_dir)
        print(sensitivity.table())
        print(f"curves: {sensitivity.files['png']}\nprior search space: {sensitivity.files['prior']} "
              "(use it with search_space=<that path>)")
        return sensitivity
    raise AssertionError(f"mode {cfg.mode!r} passed the schema but has no runner")


@hydra.main(version_base="1.3", config_path=str(resource_dir("conf")), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    _quiet_libraries()
    interrupts.install()  # Ctrl-C, `kill`, `docker stop`: end at a point where the open trial and runs can be closed
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, output_dir)
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        remove_if_nothing_of_value(output_dir)
        sys.exit(2)
    except KeyboardInterrupt:
        resume = ": finished trials are kept; run the same command again to resume" if cfg.mode == "search" else ""
        print(f"autoprune: interrupted{resume}", file=sys.stderr)
        sys.exit(130)


def remove_if_nothing_of_value(output_dir: Path) -> None:
    """After a refused invocation: the Hydra run folder goes when it holds only what Hydra writes itself
    (`.hydra/` and the job's log; the error was printed), and so do the `outputs/<date>/` folders it leaves
    empty, up to the working directory. A folder holding anything else (a report, a trial's files) stays."""
    output_dir = Path(output_dir).resolve()
    if not output_dir.is_dir() or any(e.name != ".hydra" and not (e.is_file() and e.suffix == ".log")
                                      for e in output_dir.iterdir()):
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in output_dir.parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()   # only when empty
        except OSError:
            break


def _check_writable_cwd(args: list[str]) -> None:
    """Hydra writes outputs/<date>/<time>/ here, and the default stores (autoprune.db, mlflow.db) live
    here: a read-only directory would end in a Hydra traceback."""
    if any(arg.startswith("hydra.run.dir=") for arg in args):
        return
    cwd = os.getcwd()
    if not os.access(cwd, os.W_OK | os.X_OK):
        raise AutopruneError(f"the working directory {cwd} is not writable (autoprune writes outputs/ and its "
                             "default stores there): cd to a writable directory, or set hydra.run.dir, "
                             "search.storage and tracking.uri to writable places")


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "agent":  # the measurement agent has plain options, not a Hydra config
        from autoprune.hw.agent import main as agent_main

        sys.exit(agent_main(args[1:]))
    if help_requested(args):  # modes, profiles, spaces and main overrides; `<mode> --help`: that mode's keys
        print(help_for(args))
        sys.exit(0)
    if args and args[0] in MODES:  # `python -m autoprune pick ...` == `python -m autoprune mode=pick ...`
        sys.argv[1:] = [f"mode={args[0]}", *args[1:]]
    elif args and is_mode_word(args[0]):  # `reprot`: a misspelt mode, not a malformed override
        print(f"autoprune: error: {unknown_mode(args[0])}", file=sys.stderr)
        sys.exit(2)
    if not any(arg.startswith("-") for arg in sys.argv[1:]):  # --help, --cfg, -m ...: Hydra's own business
        try:  # Hydra would answer a misspelt key or option with several lines and exit 1
            _check_writable_cwd(sys.argv[1:])
            check_overrides(sys.argv[1:], MODES)
        except AutopruneError as exc:
            print(f"autoprune: error: {exc}", file=sys.stderr)
            sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
