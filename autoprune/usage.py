"""`python -m autoprune --help` and `python -m autoprune <mode> --help`, and the answer to a misspelt mode.

The general help lists the modes, the shipped tasks, hardware profiles and search spaces (read from
the shipped folders) and the main overrides; a mode's help prints its keys as conf/config.yaml
writes them, comments and defaults included. `--cfg job` still prints the whole composed config.
"""

from __future__ import annotations

import difflib

import yaml

from autoprune.errors import ConfigError
from autoprune.resources import resource_dir

MODES = {
    "search": "(default) prune, fine-tune and time candidates on the target; find the Pareto front",
    "report": "rebuild a search's report (report.html, PNGs, CSV) from its Optuna study and MLflow",
    "pick": "choose the model to deploy, register it in the MLflow Model Registry, export its ONNX",
    "reproduce": "rebuild one trial from the baseline and its logged plan; print logged vs now",
    "calibrate": "per-layer latency table of the task's model on the profile, and the predictor's error",
    "sensitivity": "prune each group alone at several ratios; curves and a prior search space",
    "agent": "the remote measurement agent (plain options: python -m autoprune agent --help)",
}

# The keys each mode reads, as dotted paths into conf/config.yaml (a key's whole block is shown).
MODE_KEYS = {
    "search": ["task", "hw", "search_space", "seed", "cache_dir", "search", "prune", "recover", "tracking"],
    "report": ["report", "search.storage", "search.study_name", "search.hv_max_drop", "tracking"],
    "pick": ["pick", "search.storage", "search.study_name", "tracking"],
    "reproduce": ["reproduce", "search.storage", "search.study_name", "tracking"],
    "calibrate": ["calibrate", "task", "hw", "search_space"],
    "sensitivity": ["sensitivity", "task", "hw", "recover", "tracking"],
}

MAIN_OVERRIDES = [
    ("task=<name>", "model + data + baseline training, from the tasks below"),
    ("hw=<name or path>", "hardware profile, from the profiles below or a YAML file"),
    ("search_space=<name or path>", "which groups are pruned and the ratio range"),
    ("search.n_trials=<int>", "the study's trial budget (a re-run resumes or extends it)"),
    ("search.sampler=<name>", "the searcher: tpe, nsga2, gp, random, qmc or uniform"),
    ("search.constraints.<bound>=<value>", "hard limits: max_latency_ms, min_accuracy, max_accuracy_drop, max_params"),
    ("search.storage=<SQLAlchemy URL>", "Optuna storage (default sqlite:///autoprune.db)"),
    ("tracking.uri=<MLflow URI>", "MLflow tracking (default sqlite:///mlflow.db)"),
    ("recover.epochs=<int>", "fine-tuning epochs of each candidate"),
]


def _descriptions(folder: str) -> list[tuple[str, str]]:
    rows = []
    for path in sorted(resource_dir(folder).glob("*.yaml")):
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            loaded = None
        text = loaded.get("description") if isinstance(loaded, dict) else None
        rows.append((path.stem, str(text or "")))
    return rows


def _listing(rows: list[tuple[str, str]], limit: int = 116) -> list[str]:
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"  {name.ljust(width)}  {text}".rstrip() for name, text in rows]
    return [line if len(line) <= limit else line[:limit - 1].rstrip(" ,;:") + "…" for line in lines]


def general_help() -> str:
    lines = ["usage: python -m autoprune [MODE] [key=value ...]",
             "",
             "autoprune: hardware-aware pruning search. Prunes, fine-tunes, exports and times every candidate",
             "on the target hardware, searches per-group pruning ratios with Optuna, tracks it all in MLflow.",
             "",
             "modes (python -m autoprune <mode> --help lists a mode's keys):"]
    lines += _listing(list(MODES.items()))
    lines += ["", "main overrides:"]
    lines += _listing(MAIN_OVERRIDES)
    for title, key, rows in (("tasks", "task", _task_rows()), ("hardware profiles", "hw", _descriptions("hw_profiles")),
                             ("search spaces", "search_space", _descriptions("search_spaces"))):
        lines += ["", f"{title} ({key}=<name>):"]
        lines += _listing(rows)
    lines += ["",
              "examples:",
              "  python -m autoprune search.n_trials=40 hw=cpu-ort-1t",
              "  python -m autoprune report",
              "  python -m autoprune pick pick.max_latency_ms=0.2 pick.min_accuracy=0.97",
              "",
              "python -m autoprune --cfg job prints every key with its value. Docs: README.md."]
    return "\n".join(lines)


def _task_rows() -> list[tuple[str, str]]:
    rows = []
    for path in sorted((resource_dir("conf") / "task").glob("*.yaml")):
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "")
        rows.append((path.stem, first.lstrip("# ").strip()))
    return rows


def _block(lines: list[str], dotted: str) -> list[str]:
    """The lines of conf/config.yaml that define key `dotted`: its line, its children and their comments."""
    start, indent, found = 0, -1, 0
    for part in dotted.split("."):
        for i in range(start, len(lines)):
            line = lines[i]
            depth = len(line) - len(line.lstrip())
            if line.strip() and not line.lstrip().startswith("#") and depth <= indent:
                return []  # left the parent's block without finding `part`
            if depth > indent and line.lstrip().startswith(f"{part}:"):
                found, start, indent = i, i + 1, depth
                break
        else:
            return []
    end = found + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    block = [line[indent:] for line in lines[found:end]]
    while block and not block[-1].strip():
        block.pop()
    if "." in dotted:  # `search.storage: ...`, its children kept under it
        parent = dotted.rsplit(".", 1)[0]
        block = [f"{parent}.{block[0]}", *(f"{' ' * (len(parent) + 1)}{line}" for line in block[1:])]
    return block


def _task_line(lines: list[str]) -> list[str]:
    """`task` is a config group (the defaults list), not a key of its own."""
    default = next((line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("- task:")), "")
    names = ", ".join(name for name, _ in _task_rows())
    return [f"task: {default}  # a config group: one of {names} (python -m autoprune --help)"]


def mode_help(mode: str) -> str:
    lines = (resource_dir("conf") / "config.yaml").read_text().splitlines()
    out = [f"usage: python -m autoprune {mode} [key=value ...]", "", f"{mode}: {MODES[mode]}", "",
           "keys, as conf/config.yaml sets them (override as key=value, nested keys with dots: tracking.uri=...):",
           ""]
    for key in MODE_KEYS[mode]:
        out += _task_line(lines) if key == "task" else _block(lines, key)
    out += ["", ("python -m autoprune --cfg job prints every key with its value; python -m autoprune --help "
                 "lists the modes, profiles and search spaces.")]
    return "\n".join(out)


def unknown_mode(word: str) -> ConfigError:
    close = difflib.get_close_matches(word, list(MODES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"unknown mode '{word}': {hint}modes: {', '.join(MODES)} "
                       "(python -m autoprune --help; overrides are key=value)")


def is_mode_word(word: str) -> bool:
    """A bare word where a mode goes (not an override `key=value`, `~key`, `+key=...`, nor an option)."""
    return word.isidentifier() and "=" not in word


def help_requested(args: list[str]) -> bool:
    return any(arg in ("--help", "-h") for arg in args)


def help_for(args: list[str]) -> str:
    """The help text for `python -m autoprune [MODE] --help`."""
    words = [a.split("=", 1)[1] if a.startswith("mode=") else a for a in args]
    mode = next((w for w in words if w in MODE_KEYS), None)
    return general_help() if mode is None else mode_help(mode)
