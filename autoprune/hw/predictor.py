"""Latency predictor: a per-profile lookup table of per-layer latencies at every width the search can
produce, built by timing each layer alone on the target (`calibrate`).

    predicted_ms = scale * sum(table[layer][(c_in, c_out)] for every conv / linear layer) + offset_ms

Each layer (a Conv or Linear module) is timed alone, as a one-layer ONNX model with the input shape it
sees inside the network, at every (in, out) width pair the search space allows. `scale` and
`offset_ms` are fitted by least squares to whole-model measurements at a few uniform pruning ratios:
they absorb what the table leaves out (per-run overhead, BatchNorm/activation/add layers, fusion).
The error against measurement is reported on randomly drawn plans (share within ±10 %).

A candidate is predicted from its group widths or its plan alone (`predict_widths`, `predict_plan`: no
pruning or export needed), which is what a search uses to screen candidates and to allocate widths under
a latency budget (autoprune.search.allocate).

This module knows layer shapes and widths only, never the pruner: which group sets which layer's widths
is found by autoprune.calibrate (`layer_specs`, by pruning probes) and handed in as `LayerSpec`s; whole
models are measured by the caller, which hands the results to `LatencyTable.fit` / `validate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.errors import ConfigError, MeasurementError
from autoprune.hw.backend import LatencyBackend
from autoprune.hw.export import export_model
from autoprune.hw.profile import HardwareProfile
from autoprune.plan import GroupPlan, PrunePlan, kept_channels

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Which layers there are, what they see, and which group sets their widths
@dataclass(frozen=True)
class LayerSpec:
    """A Conv or Linear module of the baseline: its shape and the groups that prune its channels."""

    name: str
    kind: str                          # conv1d | conv2d | conv3d | linear
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]       # what the layer sees, batch included
    in_group: Optional[str] = None     # the group that prunes its input channels (None: fixed)
    out_group: Optional[str] = None    # the group that prunes its output channels (None: fixed)
    depthwise: bool = False            # groups == in_channels == out_channels
    conv: dict = field(default_factory=dict)  # kernel_size, stride, padding, dilation, groups

    def widths(self, group_widths: dict[str, int]) -> tuple[int, int]:
        """(in, out) channels when each group has the width in `group_widths` (missing: unpruned)."""
        c_in = group_widths.get(self.in_group, self.in_channels) if self.in_group else self.in_channels
        c_out = group_widths.get(self.out_group, self.out_channels) if self.out_group else self.out_channels
        return (c_out, c_out) if self.depthwise else (c_in, c_out)


def module_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) channels / features of every Conv and Linear module, by name."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            shapes[name] = ((m.in_features, m.out_features) if isinstance(m, nn.Linear)
                            else (m.in_channels, m.out_channels))
    return shapes


def input_shapes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The input shape each Conv / Linear module sees on `example_input` (modules not reached: absent)."""
    seen: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def record(_module, inputs, _output) -> None:
            seen.setdefault(name, tuple(inputs[0].shape))
        return record

    hooks = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def layer_spec(name: str, module: nn.Module, input_shape: tuple[int, ...], in_group: Optional[str] = None,
               out_group: Optional[str] = None) -> LayerSpec:
    """The LayerSpec of one Conv / Linear module of the baseline."""
    if isinstance(module, nn.Linear):
        return LayerSpec(name, "linear", module.in_features, module.out_features, tuple(input_shape), in_group,
                         out_group)
    assert isinstance(module, nn.modules.conv._ConvNd), f"{name}: not a Conv / Linear module"
    c_in, c_out = module.in_channels, module.out_channels
    padding = module.padding if isinstance(module.padding, str) else list(module.padding)
    conv = {"kernel_size": list(module.kernel_size), "stride": list(module.stride), "padding": padding,
            "dilation": list(module.dilation), "groups": module.groups}
    depthwise = module.groups == c_in == c_out and c_in > 1
    return LayerSpec(name, type(module).__name__.lower(), c_in, c_out, tuple(input_shape), in_group, out_group,
                     depthwise, conv)


def width_options(groups: Mapping[str, int], ratios: Sequence[float], round_to: int) -> dict[str, list[int]]:
    """The widths each group (name -> unpruned width) can take under `ratios` and `round_to`."""
    return {g: sorted({kept_channels(ch, float(r), round_to) for r in ratios}) for g, ch in groups.items()}


def width_pairs(spec: LayerSpec, options: Mapping[str, Sequence[int]]) -> list[tuple[int, int]]:
    ins = options.get(spec.in_group, [spec.in_channels]) if spec.in_group else [spec.in_channels]
    outs = options.get(spec.out_group, [spec.out_channels]) if spec.out_group else [spec.out_channels]
    if spec.depthwise:
        return [(c, c) for c in outs]
    return [(a, b) for a in ins for b in outs]


def one_layer_model(spec: LayerSpec, c_in: int, c_out: int) -> tuple[nn.Module, torch.Tensor]:
    """The layer alone at widths (c_in, c_out), with a random input of the shape it sees in the network."""
    torch.manual_seed(0)  # same bytes every time, so cached measurements are reused
    if spec.kind == "linear":
        return nn.Linear(c_in, c_out), torch.randn(*spec.input_shape[:-1], c_in)
    conv_cls = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[spec.kind]
    groups = c_in if spec.depthwise else spec.conv["groups"]
    if c_in % groups or c_out % groups:
        groups = 1
    layer = conv_cls(c_in, c_out, spec.conv["kernel_size"], spec.conv["stride"], spec.conv["padding"],
                     spec.conv["dilation"], groups)
    return layer, torch.randn(spec.input_shape[0], c_in, *spec.input_shape[2:])


# --------------------------------------------------------------------------------------------------
# The table
@dataclass
class LatencyTable:
    """Per-layer latencies (ms) by (in, out) width, plus the fitted correction. JSON round-trip."""

    profile: str
    profile_digest: str
    round_to: int
    groups: dict[str, int]                       # group -> unpruned width
    layers: list[LayerSpec]
    entries: dict[str, dict[tuple[int, int], float]]  # layer -> {(c_in, c_out): ms}
    scale: float = 1.0
    offset_ms: float = 0.0
    fingerprint: dict = field(default_factory=dict)

    def layer_ms(self, spec: LayerSpec, c_in: int, c_out: int) -> float:
        """Table value; off the grid, the nearest entry scaled by the ratio of multiply-adds."""
        table = self.entries.get(spec.name)
        if not table:
            raise MeasurementError(f"the latency table has no layer '{spec.name}': it was built for another "
                                   "model; run calibrate again")
        if (c_in, c_out) in table:
            return table[(c_in, c_out)]
        (a, b), ms = min(table.items(), key=lambda kv: abs(math.log(kv[0][0] / c_in)) + abs(math.log(kv[0][1] / c_out)))
        macs = (c_out if spec.depthwise else c_in * c_out)
        return ms * macs / (b if spec.depthwise else a * b)

    def raw_ms(self, group_widths: Mapping[str, int]) -> float:
        """Sum of the table's layer latencies at these group widths (missing groups: unpruned)."""
        return sum(self.layer_ms(s, *s.widths(dict(group_widths))) for s in self.layers)

    def group_widths(self, plan: PrunePlan) -> dict[str, int]:
        """Each group's width under `plan` (channel counts rounded to the table's round_to; masks keep widths)."""
        return plan.widths(self.groups, self.round_to)

    def predict_widths(self, group_widths: Mapping[str, int]) -> float:
        """Predicted median latency (ms) of the baseline with these group widths (missing groups: unpruned)."""
        unknown = sorted(set(group_widths) - set(self.groups))
        if unknown:
            raise MeasurementError(f"the latency table does not know group(s) {unknown}: it was built for "
                                   "another model; run calibrate again")
        return self.scale * self.raw_ms(group_widths) + self.offset_ms

    def predict_plan(self, plan: PrunePlan) -> float:
        """Predicted median latency (ms) of the baseline pruned by `plan`; no model needed."""
        unknown = sorted(set(plan.groups) - set(self.groups))
        if unknown:
            raise MeasurementError(f"the latency table does not know group(s) {unknown}: it was built for "
                                   "another model; run calibrate again")
        return self.predict_widths(self.group_widths(plan))

    def fit(self, widths: Sequence[Mapping[str, int]], measured_ms: Sequence[float]) -> "LatencyTable":
        """Fit `scale` and `offset_ms` by least squares to whole models (their group widths) measured at
        `measured_ms`; one model (or models the table cannot tell apart) only shifts the offset. In place."""
        if not widths or len(widths) != len(measured_ms):
            raise ConfigError("LatencyTable.fit needs as many measurements as models (at least one)")
        raw = [self.raw_ms(w) for w in widths]
        if len(set(raw)) > 1:
            self.scale, self.offset_ms = (float(v) for v in np.polyfit(raw, list(measured_ms), 1))
        else:
            self.scale, self.offset_ms = 1.0, float(np.mean(measured_ms) - raw[0])
        return self

    def predict_model(self, model: nn.Module) -> float:
        """Predicted median latency (ms) of an already pruned model (widths read from its layers)."""
        shapes = module_shapes(model)
        total = 0.0
        for spec in self.layers:
            if spec.name not in shapes:
                raise MeasurementError(f"model has no layer '{spec.name}' of the latency table: run calibrate "
                                       "for this model")
            c_in, c_out = shapes[spec.name]
            total += self.layer_ms(spec, c_in, c_out)
        return self.scale * total + self.offset_ms

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION, "profile": self.profile, "profile_digest": self.profile_digest,
            "round_to": self.round_to, "groups": self.groups, "scale": self.scale, "offset_ms": self.offset_ms,
            "fingerprint": self.fingerprint,
            "layers": [dataclasses.asdict(s) | {"entries": {f"{a}x{b}": ms for (a, b), ms in
                                                            sorted(self.entries[s.name].items())}}
                       for s in self.layers],
        }

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path, profile: Optional[HardwareProfile] = None) -> "LatencyTable":
        """Read a table; with `profile`, refuse one calibrated for different measurement settings."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')} (expected {FORMAT_VERSION})")
            layers: list[LayerSpec] = []
            entries: dict[str, dict] = {}
            for item in data["layers"]:
                table = item.pop("entries")
                item["input_shape"] = tuple(item["input_shape"])
                spec = LayerSpec(**item)
                layers.append(spec)
                entries[spec.name] = {tuple(int(v) for v in k.split("x")): float(ms) for k, ms in table.items()}
            table = cls(data["profile"], data["profile_digest"], int(data["round_to"]), dict(data["groups"]),
                        layers, entries, float(data["scale"]), float(data["offset_ms"]), data.get("fingerprint", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read latency table {path} ({exc}): run calibrate again") from None
        if profile is not None and profile.digest() != table.profile_digest:
            raise ConfigError(f"latency table {path} was calibrated for profile '{table.profile}' with other "
                              f"settings than '{profile.name}': run calibrate with hw={profile.name}")
        return table


def _out_size(size: int, kernel: int, stride: int, padding, dilation: int) -> int:
    if padding == "same":
        return size
    pad = 0 if padding == "valid" else int(padding)
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def layer_macs(spec: LayerSpec) -> float:
    """Multiply-adds of the layer at its unpruned widths."""
    if spec.kind == "linear":
        return float(math.prod(spec.input_shape[:-1]) * spec.in_channels * spec.out_channels)
    c = spec.conv
    spatial = [_out_size(size, c["kernel_size"][i], c["stride"][i],
                         c["padding"] if isinstance(c["padding"], str) else c["padding"][i], c["dilation"][i])
               for i, size in enumerate(spec.input_shape[2:])]
    return float(spec.input_shape[0] * spec.out_channels * (spec.in_channels // c["groups"])
                 * math.prod(c["kernel_size"]) * math.prod(spatial))


@dataclass
class MacsModel:
    """A latency model without measurements: the summed multiply-adds (millions) of the Conv / Linear layers
    at given group widths. What allocation uses when no calibrated table is given; same interface as
    LatencyTable's (`groups`, `round_to`, `predict_widths`, `group_widths`)."""

    groups: dict[str, int]
    layers: list[LayerSpec]
    round_to: int = 1
    scale: float = 1.0        # ms per million multiply-adds once fitted (`fit`); 1: millions of MACs
    offset_ms: float = 0.0

    def __post_init__(self) -> None:
        self._macs = {s.name: layer_macs(s) for s in self.layers}

    def raw_macs(self, group_widths: Mapping[str, int]) -> float:
        """Millions of multiply-adds of the Conv / Linear layers at these group widths (missing: unpruned)."""
        total = 0.0
        for s in self.layers:
            c_in, c_out = s.widths(dict(group_widths))
            share = c_out / s.out_channels if s.depthwise else (c_in * c_out) / (s.in_channels * s.out_channels)
            total += self._macs[s.name] * share
        return total / 1e6

    def fit(self, widths: Sequence[Mapping[str, int]], measured_ms: Sequence[float]) -> "MacsModel":
        """Turn MACs into milliseconds: `scale` and `offset_ms` by least squares on whole models (their group
        widths) measured at `measured_ms`; one model (or models of equal MACs) gives a proportional scale.
        A negative slope (noise) falls back to the mean. In place."""
        if not widths or len(widths) != len(measured_ms):
            raise ConfigError("MacsModel.fit needs as many measurements as models (at least one)")
        raw = [self.raw_macs(w) for w in widths]
        if len(set(raw)) > 1:
            scale, offset = (float(v) for v in np.polyfit(raw, list(measured_ms), 1))
            self.scale, self.offset_ms = (scale, offset) if scale >= 0 else (0.0, float(np.mean(measured_ms)))
        else:
            self.scale, self.offset_ms = float(np.mean(measured_ms)) / raw[0] if raw[0] > 0 else 0.0, 0.0
        return self

    def group_widths(self, plan: PrunePlan) -> dict[str, int]:
        return plan.widths(self.groups, self.round_to)

    def predict_widths(self, group_widths: Mapping[str, int]) -> float:
        unknown = sorted(set(group_widths) - set(self.groups))
        if unknown:
            raise MeasurementError(f"the MACs model does not know group(s) {unknown}: it was built for another model")
        return self.scale * self.raw_macs(group_widths) + self.offset_ms

    def predict_plan(self, plan: PrunePlan) -> float:
        return self.predict_widths(self.group_widths(plan))


# --------------------------------------------------------------------------------------------------
# Building and checking
@dataclass(frozen=True)
class PredictorReport:
    """Prediction error against measurement: rel_errors are (predicted - measured) / measured."""

    n: int
    share_within_10pct: float
    mean_abs_rel_error: float
    max_abs_rel_error: float
    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]

    def summary(self) -> str:
        return (f"predictor: {100 * self.share_within_10pct:.0f}% of {self.n} models within ±10% "
                f"(mean |error| {100 * self.mean_abs_rel_error:.1f}%, max {100 * self.max_abs_rel_error:.1f}%)")


def error_report(predicted: Sequence[float], measured: Sequence[float]) -> PredictorReport:
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if len(p) == 0 or len(p) != len(m):
        raise ConfigError("error_report needs as many predictions as measurements (at least one)")
    rel = np.abs(p - m) / m
    return PredictorReport(len(p), float(np.mean(rel <= 0.10)), float(rel.mean()), float(rel.max()),
                           tuple(map(float, p)), tuple(map(float, m)))


def build_table(layers: Sequence[LayerSpec], groups: Mapping[str, int], options: Mapping[str, Sequence[int]],
                profile: HardwareProfile, backend: LatencyBackend, workdir: Path) -> LatencyTable:
    """Time every layer alone (`layers`, with the groups that set their widths) at every width pair the
    groups' `options` (group -> widths) can produce; `groups`: group -> unpruned width. The correction
    (scale, offset) is left at 1 and 0: fit it with `LatencyTable.fit` on measured whole models."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    layer_profile = dataclasses.replace(profile, input_shape=None, profile_layers=False)
    entries: dict[str, dict[tuple[int, int], float]] = {}
    fingerprint: dict = {}
    options = {g: list(v) for g, v in options.items()}
    for spec in layers:
        entries[spec.name] = {}
        for c_in, c_out in width_pairs(spec, options):
            layer, x = one_layer_model(spec, c_in, c_out)
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                stats = backend.measure(export_model(layer, x, Path(tmp)), layer_profile)
            entries[spec.name][(c_in, c_out)] = stats.median_ms
            fingerprint = stats.fingerprint
    return LatencyTable(profile.name, profile.digest(), profile.round_to, dict(groups), list(layers), entries,
                        fingerprint=fingerprint)


def random_plans(groups: Sequence[str], ratios: Sequence[float], n: int, seed: int = 0) -> list[PrunePlan]:
    """`n` plans with an independent random ratio from `ratios` per group."""
    rng = random.Random(seed)
    return [PrunePlan({g: GroupPlan(float(rng.choice(list(ratios)))) for g in groups}) for _ in range(n)]


def validate(table: LatencyTable, plans: Sequence[PrunePlan], measure: Callable[[PrunePlan], float]
             ) -> PredictorReport:
    """Compare the table's predictions of `plans` with `measure(plan)` (the median ms of the real model)."""
    predicted = [table.predict_plan(p) for p in plans]
    return error_report(predicted, [measure(p) for p in plans])
