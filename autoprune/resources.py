"""Locate the YAML folders shipped with autoprune (conf/, hw_profiles/, search_spaces/).

In a checkout they sit next to the package; in a wheel they are copied inside it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from autoprune.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Folder `name` from an installed wheel (inside the package) or a checkout (beside it)."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"autoprune's '{name}' folder is missing: reinstall autoprune (pip install -e .)")


def resolve_yaml(kind: str, name_or_path: str) -> Path:
    """A shipped YAML by name (`cpu-ort-1t`) in folder `kind`, or any YAML file by path."""
    path = Path(name_or_path).expanduser()
    folder = resource_dir(kind)
    shipped = lambda: ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))  # noqa: E731 (for errors only)
    if path.suffix in {".yaml", ".yml"} or path.parent != Path("."):
        if path.is_file():
            return path
        raise ConfigError(f"{kind} file not found: {path} (relative to {Path.cwd()}): fix the path "
                          f"or use a shipped name, one of [{shipped()}]")
    if (folder / f"{name_or_path}.yaml").is_file():
        return folder / f"{name_or_path}.yaml"
    close = difflib.get_close_matches(str(name_or_path), [p.stem for p in folder.glob("*.yaml")], n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"unknown {kind} '{name_or_path}': {guess}choose one of [{shipped()}] or give a path to a "
                      "YAML file")


def yaml_problem(exc: Exception) -> str:
    """Where and what a YAML parse error is, in a few words: `line 2: expected ',' or ']'`."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["syntax error"])[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else str(problem)


MAX_YAML_VALUES = 10_000


def yaml_size_problem(data, limit: int = MAX_YAML_VALUES) -> str | None:
    """Why a loaded YAML document is too large to handle, or None. Counts every value as it would be
    walked, aliases included, and stops at `limit`: a "billion laughs" alias bomb is caught after
    `limit` steps instead of exhausting memory when printed or hashed."""
    seen, stack = 0, [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return f"it holds more than {limit:,} values (nested aliases?)"
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, str) and len(node) > 100_000:
            return f"it holds a string of {len(node):,} characters"
    return None
