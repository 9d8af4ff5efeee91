"""Check command-line overrides before Hydra runs them.

Hydra answers a misspelt key, an unknown config-group option or a malformed override with several
lines and exit status 1. `check_overrides` composes the config the way Hydra will and turns each of
these mistakes into one ConfigError naming the fix (the closest key, the available options, the
expected type), which the CLI prints as one line with exit status 2. A value's type comes from the
config schema (autoprune.config); under the open `task:` mapping, from the composed default. Ranges
and choices are the schema's business, checked when `cli.run` types the whole config.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from autoprune.config import AppConfig
from autoprune.errors import ConfigError, first_line
from autoprune.resources import resource_dir
from autoprune.schema import CFG_HINT, convert, field_at, type_word

_ABSENT = object()


def check_overrides(args: Sequence[str], modes: Sequence[str] = ()) -> None:
    """Raise ConfigError (one line, with the fix) for the first override Hydra or autoprune would refuse.
    `modes`: words that are commands when they come first (`python -m autoprune pick ...`)."""
    overrides = _parse(args, modes)
    conf = resource_dir("conf")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        groups = [o for o in overrides if _is_group(o, conf)]
        base = _compose([o.input_line for o in groups if o.input_line is not None])          # defaults of the selected task etc.
        keys = _keys(base)
        for o in overrides:
            hydra_key = o.key_or_group == "hydra" or o.key_or_group.startswith("hydra.")
            if o in groups or hydra_key or o.is_add() or o.is_force_add() or o.is_delete():
                continue  # Hydra's own settings and explicit additions / deletions: its compose judges them
            default = OmegaConf.select(base, o.key_or_group, default=_ABSENT, throw_on_resolution_failure=False)
            if default is _ABSENT:
                raise ConfigError(_unknown_key(o.key_or_group, keys))
            _check_type(o, default)
            if o.key_or_group in FRACTION_KEYS and not o.is_sweep_override():
                check_fraction(o.key_or_group, o.value())
        _compose(list(args), hydra=True)                           # whatever else Hydra itself refuses


def _parse(args: Sequence[str], modes: Sequence[str]) -> list[Override]:
    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(list(args))
    except OverrideParseException as exc:
        if exc.override in modes:
            raise ConfigError(f"'{exc.override}' is a mode: put it first (python -m autoprune {exc.override} ...) "
                              f"or write mode={exc.override}") from None
        lines = [line for line in str(exc.message or "").splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else "syntax error"  # lines[0] only repeats the override
        raise ConfigError(f"cannot parse override '{exc.override}' ({reason}): write key=value, "
                          "e.g. search.n_trials=30") from None


def _is_group(o: Override, conf) -> bool:
    """A config-group choice (`task=digits`, `hydra/launcher=...`), not a value."""
    return "/" in o.key_or_group or o.package is not None or (conf / o.key_or_group).is_dir()


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    try:
        return compose("config", overrides=overrides, return_hydra_config=hydra)
    except MissingConfigException as exc:
        raise ConfigError(_unknown_option(exc)) from None
    except Exception as exc:  # Hydra's other refusals: +key on an existing key, ~key on a missing one...
        raise ConfigError(f"Hydra refuses the overrides: {first_line(exc)} (check them against {CFG_HINT}, "
                          "or see python -m autoprune --help)") from None


def _unknown_option(exc: MissingConfigException) -> str:
    group, _, choice = str(exc.missing_cfg_file or "").rpartition("/")
    options = list(exc.options or [])
    if not group or not options:
        return f"{first_line(exc)}: check the config group option (python -m autoprune --help lists them)"
    close = difflib.get_close_matches(choice, options, n=1)
    guess = f"did you mean {group}={close[0]}? " if close else ""
    return f"unknown {group} '{choice}': {guess}choose one of [{', '.join(options)}]"


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every key of the config, nested ones dotted (`search.n_trials`)."""
    out = []
    for key in cfg.keys():
        dotted = prefix + str(key)
        out.append(dotted)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_interpolation() and not node._is_missing():
            out.extend(_keys(node, f"{dotted}."))
    return out


def _unknown_key(key: str, keys: list[str]) -> str:
    """The closest existing keys: same last part (`n_trials` -> search.n_trials), else by spelling."""
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:3] or difflib.get_close_matches(key, keys, n=1)
    guess = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown config key '{key}': {guess}(every key: {CFG_HINT})"


def _schema_type(key: str) -> Optional[tuple[Callable[[Any], bool], str]]:
    """(test, name) of the values the schema's field at `key` takes; None outside the schema (task.*)."""
    found = field_at(AppConfig, key)
    if found is None:
        return None
    tp = found[0]

    def test(value: Any) -> bool:
        try:
            convert(tp, value, key)
            return True
        except ConfigError:
            return False
    return test, type_word(tp)


def _expected(default: Any) -> Optional[tuple[Callable[[Any], bool], str]]:
    """(test, name) of the values an override of an open-mapping key (task.*) whose default is `default`
    may take; None when anything goes (strings and null defaults: the code that reads them checks them)."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, int):
        return (lambda v: number(v) and isinstance(v, int)), "an integer"
    if isinstance(default, float):
        return number, "a number"
    if isinstance(default, (ListConfig, list)):
        return (lambda v: isinstance(v, list)), "a list"
    if isinstance(default, (DictConfig, dict)):
        return (lambda v: isinstance(v, dict)), "a mapping"
    return None


# Accuracy keys take fractions in [0, 1]; 97 or 2 there is a percentage (or points) written by mistake.
FRACTION_KEYS = ("pick.min_accuracy", "search.constraints.min_accuracy", "search.constraints.max_accuracy_drop")


def check_fraction(key: str, value: Any) -> None:
    """ConfigError when an accuracy key's value is outside [0, 1]; a percentage gets the fraction it meant.
    A plain function so that a typed config schema can call it for these keys too."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or 0 <= value <= 1:
        return   # null, a fraction, or a non-number (the type check answers that)
    if 1 < value <= 100:
        raise ConfigError(f"{key}={value} is outside [0, 1]: accuracies are fractions, so for {value}% "
                          f"write {key}={value / 100:g}")
    example = "0.01 for 1 point" if key.endswith("_drop") else "0.97"
    raise ConfigError(f"{key}={value} is outside [0, 1]: accuracies are fractions, e.g. {key}={example}")


def _check_type(o: Override, default: Any) -> None:
    if o.is_sweep_override():
        return  # `a=1,2` without --multirun: Hydra's own compose reports it
    value, expected = o.value(), _schema_type(o.key_or_group) or _expected(default)
    if expected is None or (isinstance(value, str) and "${" in value):
        return
    test, name = expected
    if not test(value) and not (value is None and field_at(AppConfig, o.key_or_group) is None):
        key, text = o.key_or_group, o.get_value_element_as_str()
        if name.startswith("a list"):
            example = f"{key}=[{text}]"
        elif name.startswith("a mapping"):
            example = f"{key}.{next(iter(default or {}), 'name')}=<value>"
        elif default is None:
            example = f"{key}=<{name.split(' or ')[0].split(' ', 1)[-1]}>"
        else:
            example = f"{key}={str(default).lower() if isinstance(default, bool) else default}"
        raise ConfigError(f"{key}={text} is not {name}: give {name}, e.g. {example}")
