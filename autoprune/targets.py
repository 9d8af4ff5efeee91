"""Extra measurement targets of a search (`search.also_measure=[cpu-ort-b32, cpu-ort-int8-1t]`): each
candidate, once fine-tuned, is also timed (and, where the profile's artifact differs, scored) on these
profiles, so one search yields a front per target for the price of extra measurements, not extra
fine-tunes. Results are metrics named `<profile>/<metric>`:

    <profile>/latency_ms             median latency per batch on that profile (and latency_p90_ms)
    <profile>/latency_per_sample_ms  latency_ms / the profile's batch_size
    <profile>/val_accuracy           the profile's artifact's val accuracy (int8: the int8 model, run by
                                     ONNX Runtime), or the PyTorch model's where the artifact is fp32

They go to the trial's Optuna user attrs and MLflow run like every other metric; `python -m autoprune
report report.target=<profile>` draws the front on that target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from autoprune.errors import ConfigError
from autoprune.hw import HardwareProfile, load_profile
from autoprune.hw.artifact import artifact_accuracy, artifact_differs, build_artifact
from autoprune.hw.backend import Measurer, check_ready, get_backend
from autoprune.hw.export import ExportedModel

METRICS = ("latency_ms", "latency_p90_ms", "latency_per_sample_ms", "val_accuracy")
_NAME = re.compile(r"^[A-Za-z0-9_.\- ]{1,100}$")   # what an MLflow metric name may hold (less "/")


@dataclass(frozen=True)
class Target:
    """One extra profile a search measures on, with the backend that measures it."""

    profile: HardwareProfile
    backend: Measurer

    @property
    def prefix(self) -> str:
        return f"{self.profile.name}/"


def metric(profile_name: str, name: str) -> str:
    """The metric key of `name` (latency_ms, val_accuracy, ...) measured on the extra target `profile_name`."""
    return f"{profile_name}/{name}"


def load_targets(names: Optional[Iterable], main: HardwareProfile, cache_dir: Optional[Path] = None,
                 check: bool = True) -> tuple[Target, ...]:
    """The profiles of search.also_measure (names in hw_profiles/ or YAML paths), each checked measurable
    from here (`check`). ConfigError for anything that is not a list of distinct other profiles."""
    if names is None:
        return ()
    if isinstance(names, (str, bytes)) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"search.also_measure must be a list of hardware profile names, got {names!r}: "
                          "write search.also_measure=[cpu-ort-b32,cpu-ort-int8-1t]")
    targets: list[Target] = []
    for name in names:
        profile = load_profile(name)
        if not _NAME.match(profile.name):
            raise ConfigError(f"search.also_measure: profile name {profile.name!r} cannot prefix a metric name: "
                              "rename the file to letters, digits, '-', '_' and '.'")
        if profile.name == main.name or profile.name in {t.profile.name for t in targets}:
            raise ConfigError(f"search.also_measure lists profile '{profile.name}' twice (or the search's own hw): "
                              "list each other profile once")
        if check:
            check_ready(profile)
        targets.append(Target(profile, get_backend(profile, cache_dir=cache_dir)))
    return tuple(targets)


def measure_targets(targets: Iterable[Target], fp32: ExportedModel, calibration: Callable[[], list],
                    val, torch_val: float, fresh: bool = False) -> dict[str, float]:
    """`<profile>/<metric>` for every target: the fp32 export `fp32` deployed as each profile deploys it
    (int8: quantized with `calibration()`, written as model.int8.onnx beside it), timed, and scored on
    `val` where the artifact differs from the PyTorch model (`torch_val` otherwise)."""
    out: dict[str, float] = {}
    for target in targets:
        p = target.profile
        artifact = build_artifact(fp32, p, calibration() if p.precision == "int8" else None)
        stats = target.backend.measure(artifact, p, fresh=fresh)
        accuracy = artifact_accuracy(artifact, p, val) if artifact_differs(p) else torch_val
        out |= {metric(p.name, "latency_ms"): stats.median_ms,
                metric(p.name, "latency_p90_ms"): stats.p90_ms,
                metric(p.name, "latency_per_sample_ms"): stats.median_ms / p.batch_size,
                metric(p.name, "val_accuracy"): accuracy}
    return out
