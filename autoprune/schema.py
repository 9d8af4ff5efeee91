"""Declared settings: each config field states its type, range and choices once, on its dataclass.

    @dataclass(frozen=True)
    class KDConfig:
        temperature: float = setting(4.0, gt=0)
        alpha: float = setting(0.5, ge=0, le=1, fix="the weight of the distillation loss, e.g. 0.5")

`build(cls, mapping, "recover.kd")` turns a plain mapping (a composed Hydra config section) into the
dataclass, checking every key against the field's type hint and rule; `check(obj)` applies the same
rules to an instance built directly (call it from `__post_init__`). Every refusal is one ConfigError
line naming the dotted key and the fix, with "did you mean" for misspelt keys and choices.

A float field keeps an int as given (`recover.lr=1` stays 1, as PEP 484 allows): study names and the
stored config hash the values as the user wrote them, so converting would rename existing studies.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union, cast

from autoprune.errors import ConfigError

RULE = "autoprune.rule"
CFG_HINT = "python -m autoprune --cfg job"   # prints every key with its value
_NOTHING = dataclasses.MISSING


@dataclass(frozen=True)
class Rule:
    """What values a field takes beyond its type. Bounds apply to numbers and to each item of a list of
    numbers; `choices` (a sequence, or a function returning one, for registries imported lazily) to a
    string and to each item of a list of strings."""

    choices: Union[Sequence[str], Callable[[], Sequence[str]], None] = None
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    nonempty: bool = False       # a list with at least one item
    unique: bool = False         # a list without repeats
    item: str = ""               # what one item of a list is called in errors ("ratio")
    want: str = ""               # a valid value in words, replacing the generic "an integer >= 1"
    fix: str = ""                # the fix in words, replacing the generic "e.g. <default>"; {key} is the key

    def options(self) -> list[str]:
        choices = self.choices() if callable(self.choices) else self.choices
        return list(choices or [])


def setting(default: Any = _NOTHING, *, default_factory: Any = _NOTHING, **rule: Any) -> Any:
    """A dataclass field with its rule (see Rule); mutable defaults go through `default_factory`."""
    kwargs = {"default": default} if default_factory is _NOTHING else {"default_factory": default_factory}
    return dataclasses.field(metadata={RULE: Rule(**rule)}, **kwargs)


def rule_of(f: dataclasses.Field) -> Rule:
    return f.metadata.get(RULE) or Rule()


# ------------------------------------------------------------------------------------------ words
def show(value: Any) -> str:
    """A value as it is written in an override (`true`, `null`, `[0.25,0.5]`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def _num(x: float) -> str:
    return f"{x:g}"


def did_you_mean(word: str, options: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f"did you mean {prefix}{close[0]}? " if close else ""


def unknown_keys(where: str, bad: Sequence[str], known: Sequence[str]) -> str:
    """`recover.kd: unknown key(s) ['beta']: did you mean recover.kd.alpha? known: [...]`."""
    guess = did_you_mean(bad[0], known, f"{where}." if where else "") if len(bad) == 1 else ""
    return (f"{where or 'config'}: unknown key(s) {sorted(bad)}: {guess}known: {sorted(known)} "
            f"(every key: {CFG_HINT})")


def type_word(tp: Any) -> str:
    """`an integer`, `a number`, `true or false`, `a list` ... of a type hint (Optional adds `or null`)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if _is_union(tp):
        words = " or ".join(type_word(a) for a in args)
        return f"{words} or null" if type(None) in typing.get_args(tp) else words
    origin = typing.get_origin(tp) or tp
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(origin, "a mapping" if dataclasses.is_dataclass(origin) else
                                                        "a value")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, types.UnionType)


# ------------------------------------------------------------------------------------------ checks
def _bounds(rule: Rule) -> tuple[Optional[str], Optional[str]]:
    low = f"[{_num(rule.ge)}" if rule.ge is not None else f"({_num(rule.gt)}" if rule.gt is not None else None
    high = f"{_num(rule.le)}]" if rule.le is not None else f"{_num(rule.lt)})" if rule.lt is not None else None
    return low, high


def _in_range(rule: Rule, x: float) -> bool:
    return ((rule.ge is None or x >= rule.ge) and (rule.gt is None or x > rule.gt)
            and (rule.le is None or x <= rule.le) and (rule.lt is None or x < rule.lt))


def _range_error(rule: Rule, label: str, key: str, example: Any, integer: bool) -> str:
    low, high = _bounds(rule)
    fix = rule.fix.format(key=key) if rule.fix else f"e.g. {show(example)}" if example is not None else ""
    if low and high:
        return f"{label} is outside {low}, {high}" + (f": {fix}" if fix else "")
    op, bound = ((">=", rule.ge) if rule.ge is not None else (">", rule.gt) if rule.gt is not None else
                 ("<=", rule.le) if rule.le is not None else ("<", rule.lt))
    want = rule.want or f"{'an integer' if integer else 'a number'} {op} {_num(cast(float, bound))}"
    return f"{label} must be {want}" + (f", {fix}" if fix else "")


def integral(tp: Any) -> bool:
    """Whether a type hint holds integers (int, Optional[int], list[int]): "an integer >= 1" in errors."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp is int or bool(args) and all(integral(a) for a in args)


def check_value(rule: Rule, value: Any, key: str, example: Any = None, integer: Optional[bool] = None) -> None:
    """Raise ConfigError unless `value` (already of the field's type) keeps `rule`. `integer`: the field
    holds integers (default: judged from the value)."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        if rule.nonempty and not value:
            raise ConfigError(f"{key}=[] must be a non-empty list" + (f": {rule.fix.format(key=key)}" if rule.fix
                                                                      else f", e.g. {key}={show(example)}"))
        options = rule.options()
        wrong = [v for v in value if options and v not in options]
        if wrong:
            raise ConfigError(f"unknown {key} {wrong}: {did_you_mean(wrong[0], options)}choose from {options}")
        if rule.unique and len(set(map(str, value))) != len(value):
            raise ConfigError(f"{key}={show(value)} repeats an item: give each once")
        for v in value:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _in_range(rule, v):
                raise ConfigError(_range_error(rule, f"{key} {rule.item or 'item'} {show(v)}", key, example,
                                               isinstance(v, int) if integer is None else integer))
        return
    options = rule.options()
    if options and value not in options:
        fix = rule.fix.format(key=key) if rule.fix else f"choose one of [{', '.join(map(str, options))}]"
        raise ConfigError(f"unknown {key} '{value}': {did_you_mean(value, options, f'{key}=')}{fix}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(rule, value):
        raise ConfigError(_range_error(rule, f"{key}={show(value)}", key, example,
                                       isinstance(value, int) if integer is None else integer))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _NOTHING:
        return f.default
    if f.default_factory is not _NOTHING:
        return f.default_factory()
    return None


def check(obj: Any, where: str = "") -> None:
    """Apply every field's type and rule to a dataclass instance (from `__post_init__`: a section built
    directly, in Python, is checked like one read from the config)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number, e.g. {show(_default(f))}")
        convert(hints[f.name], value, key, _default(f))
        check_value(rule_of(f), value, key, _default(f), integral(hints[f.name]))


# ------------------------------------------------------------------------------------------ build
def convert(tp: Any, value: Any, key: str, example: Any = None, lenient: bool = False) -> Any:
    """`value` as type `tp`, or ConfigError `key=value is not <type>: give <type>, e.g. key=<example>`."""
    def refuse() -> ConfigError:
        word = type_word(tp)
        hint = f", e.g. {key}={show(example)}" if example is not None else f" (every key: {CFG_HINT})"
        return ConfigError(f"{key}={show(value)} is not {word}: give {word}{hint}")

    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, key, example, lenient)
            except ConfigError:
                continue
        raise refuse()
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return build(origin, value, key, lenient=lenient)
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise refuse()
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise refuse()
    if origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise refuse()
    if origin is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)   # search.study_name=2024
        raise refuse()
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise refuse()
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [convert(item, v, f"{key}[{i}]", None, lenient) for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise refuse()
        return dict(value)
    raise TypeError(f"schema: unsupported field type {tp!r} at {key}")


def build(cls: type, data: Any, where: str = "", lenient: bool = False) -> Any:
    """Dataclass `cls` from a plain mapping: missing keys keep their defaults, unknown keys are refused
    (ignored with `lenient`: a study stored by another version), every value checked against its field.
    A class with a `from_mapping(data, where, lenient)` classmethod (an open mapping such as `task`)
    builds itself."""
    if isinstance(data, cls):
        return data
    if hasattr(cls, "from_mapping"):
        return cls.from_mapping(data, where, lenient)
    data = {} if data is None else data
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'}={show(data)} is not a mapping: give its keys, e.g. "
                          f"{where + '.' if where else ''}{next(iter(fields))}=<value> (every key: {CFG_HINT})")
    bad = [str(k) for k in data if k not in fields]
    if bad and not lenient:
        raise ConfigError(unknown_keys(where, bad, list(fields)))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            key = f"{where}.{name}" if where else name
            value = convert(hints[name], data[name], key, _default(f), lenient)
            check_value(rule_of(f), value, key, _default(f), integral(hints[name]))
            values[name] = value
    missing = [n for n, f in fields.items() if n not in values and f.default is _NOTHING
               and f.default_factory is _NOTHING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing key(s) {missing}: add them (every key: {CFG_HINT})")
    return cls(**values)


def to_plain(obj: Any) -> Any:
    """A config tree as plain dicts and lists, field order kept (an object's `as_mapping()` wins)."""
    if hasattr(obj, "as_mapping"):
        return obj.as_mapping()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def field_at(cls: type, dotted: str) -> Optional[tuple[Any, dataclasses.Field]]:
    """(type hint, field) of a dotted key in a schema (`search.constraints.max_latency_ms`); None when the
    key leaves the schema (an open mapping such as task.model) or is not in it."""
    tp: Any = cls
    found = None
    for part in dotted.split("."):
        while _is_union(tp):   # Optional[Section]
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if not (dataclasses.is_dataclass(tp) and not hasattr(tp, "from_mapping")):
            return None
        fields = {f.name: f for f in dataclasses.fields(tp)}
        if part not in fields:
            return None
        found = fields[part]
        tp = typing.get_type_hints(tp)[part]
    return (tp, found) if found is not None else None
