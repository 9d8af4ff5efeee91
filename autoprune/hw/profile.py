"""HardwareProfile: where and how a candidate's latency is measured (hw_profiles/*.yaml)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from autoprune.errors import ProfileError
from autoprune.resources import resolve_yaml

RUNTIMES = ("onnxruntime",)
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class HardwareProfile:
    """A measurement target. Every field is a YAML key of the same name."""

    name: str
    runtime: str = "onnxruntime"
    provider: str = "CPUExecutionProvider"
    threads: int = 1                 # intra-op threads; 1 gives repeatable timings on shared machines
    inter_op_threads: int = 1
    precision: str = "fp32"
    batch_size: int = 1
    graph_optimization: str = "all"
    warmup_runs: int = 10
    min_repeats: int = 30
    max_repeats: int = 5000
    target_rel_ci: float = 0.005     # stop when the 95 % CI of the median is within ±0.5 % of it ...
    max_seconds: float = 2.0         # ... or after this much timing, whichever comes first
    round_to: int = 8                # kept channel counts are multiples of this
    description: str = ""
    source: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        def bad(field_name: str, why: str) -> ProfileError:
            return ProfileError(f"hardware profile '{self.name}': field '{field_name}' {why}")

        if self.runtime not in RUNTIMES:
            raise bad("runtime", f"is '{self.runtime}'; this version supports {list(RUNTIMES)}")
        for name in ("threads", "inter_op_threads", "batch_size", "min_repeats", "max_repeats", "round_to"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, f"must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_runs, int) or self.warmup_runs < 0:
            raise bad("warmup_runs", f"must be an integer >= 0, got {self.warmup_runs!r}")
        if self.max_repeats < self.min_repeats:
            raise bad("max_repeats", f"({self.max_repeats}) must be >= min_repeats ({self.min_repeats})")
        if not isinstance(self.target_rel_ci, (int, float)) or not 0 < self.target_rel_ci < 1:
            raise bad("target_rel_ci", f"must be in (0, 1), got {self.target_rel_ci!r}")
        if not isinstance(self.max_seconds, (int, float)) or self.max_seconds <= 0:
            raise bad("max_seconds", f"must be > 0, got {self.max_seconds!r}")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise bad("graph_optimization", f"must be one of {list(GRAPH_OPTIMIZATIONS)}, got {self.graph_optimization!r}")
        if self.precision != "fp32":
            raise bad("precision", f"is '{self.precision}'; onnxruntime profiles measure fp32 models")

    def digest(self) -> str:
        """Hash of everything that affects a measurement (not the name or description)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in {"name", "description", "source"}}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}


def load_profile(name_or_path: str) -> HardwareProfile:
    """Load `hw_profiles/<name>.yaml` or a YAML file by path; errors name the file and field."""
    path = resolve_yaml("hw_profiles", str(name_or_path))
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"hardware profile {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"hardware profile {path} must be a YAML mapping of field: value")
    known = {f.name for f in dataclasses.fields(HardwareProfile)} - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"hardware profile {path}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    data.setdefault("name", Path(path).stem)
    return HardwareProfile(**data, source=str(path))
