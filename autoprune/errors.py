"""One base error for everything autoprune rejects; the CLI prints it as one line and exits 2."""


class AutopruneError(Exception):
    """Base class: the message must say what is wrong and how to fix it, in one line."""


class ConfigError(AutopruneError):
    """Bad configuration: unknown names, values out of range, missing files."""


class ProfileError(ConfigError):
    """Invalid hardware profile; the message names the offending field."""


class PruningError(AutopruneError):
    """A plan cannot be applied to a model."""


class ExportError(AutopruneError):
    """A model could not be exported to a valid ONNX file."""


class MeasurementError(AutopruneError):
    """A latency measurement failed on the target runtime."""


class WeightsError(AutopruneError):
    """A weights file that is not a plain state_dict, or does not fit the model it is loaded into."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for
    one-line error reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def few(items: list, limit: int = 10) -> str:
    """`items` for a one-line error message: all of a short list, the first `limit` and a count otherwise."""
    items = list(items)
    if len(items) <= limit:
        return str(items)
    return f"[{', '.join(map(repr, items[:limit]))}, ... ({len(items) - limit} more)]"
