"""HardwareProfile: where and how a candidate's latency is measured (hw_profiles/*.yaml).

A profile is one flat YAML mapping; every key is a field of HardwareProfile below. Fields by topic:

- runtime:      runtime (onnxruntime | tensorrt | torch), provider (ONNX Runtime execution provider),
                device (cpu | cuda | cuda:N, for torch and tensorrt), precision (fp32 | fp16 | int8:
                the artifact that is timed and scored, autoprune.hw.artifact),
                sparse_weights (TensorRT 2:4 structured sparsity)
- threads:      threads (intra-op, an integer or "all"), inter_op_threads, cpu_affinity (core ids)
- input:        batch_size, input_shape (per-sample shape; null = the ONNX model's own static shape)
- stop rule:    warmup_runs, min_repeats, max_repeats, target_rel_ci, max_seconds
- backend:      graph_optimization, io_binding, profile_layers (ONNX Runtime); cuda_graphs (torch);
                workspace_mb (TensorRT)
- search:       round_to (kept channel counts are multiples of it)
- remote:       agent_url (measure on a `python -m autoprune agent` there), agent_token
                ("env:VAR" or "file:PATH"), agent_timeout_s
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import yaml

from autoprune.errors import ProfileError
from autoprune.resources import resolve_yaml, yaml_problem, yaml_size_problem

RUNTIMES = ("onnxruntime", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
DEFAULT_TOKEN_SOURCE = "env:AUTOPRUNE_AGENT_TOKEN"
# Fields that say how to reach a machine, not how to time on it: left out of the digest
# (agent_url stays in: another machine gives other numbers) and never sent to an agent.
CLIENT_ONLY_FIELDS = ("agent_url", "agent_token", "agent_timeout_s")
_NOT_HASHED = ("name", "description", "source", "agent_token", "agent_timeout_s")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_URL = re.compile(r"^https?://[^\s/:]+(:\d+)?/?$")


@dataclass(frozen=True)
class HardwareProfile:
    """A measurement target. Every field is a YAML key of the same name."""

    name: str
    runtime: str = "onnxruntime"
    provider: str = "CPUExecutionProvider"   # ONNX Runtime execution provider
    device: str = "cpu"                      # torch / tensorrt: cpu, cuda or cuda:N
    threads: Union[int, str] = 1             # intra-op threads, or "all" (every core); 1 repeats best
    inter_op_threads: int = 1
    cpu_affinity: Optional[tuple[int, ...]] = None  # pin the measuring thread(s) to these cores
    precision: str = "fp32"
    sparse_weights: bool = False             # TensorRT: 2:4-sparsify weights and enable sparse tactics
    batch_size: int = 1
    input_shape: Optional[tuple[int, ...]] = None   # per-sample shape, e.g. [3, 224, 224]
    graph_optimization: str = "all"          # ONNX Runtime graph optimisation level
    io_binding: bool = False                 # ONNX Runtime: bind inputs/outputs on the device
    profile_layers: bool = False             # ONNX Runtime: attribute latency to layers (LatencyStats.layer_ms)
    cuda_graphs: bool = False                # torch on CUDA: replay a captured CUDA graph
    workspace_mb: int = 1024                 # TensorRT builder workspace
    warmup_runs: int = 10
    min_repeats: int = 30
    max_repeats: int = 5000
    target_rel_ci: float = 0.005     # stop when the 95 % CI of the median is within ±0.5 % of it ...
    max_seconds: float = 2.0         # ... or after this much timing, whichever comes first
    round_to: int = 8                # kept channel counts are multiples of this
    agent_url: Optional[str] = None  # http(s)://host:port of a measurement agent on the target
    agent_token: str = DEFAULT_TOKEN_SOURCE
    agent_timeout_s: float = 600.0   # includes waiting in the agent's queue
    description: str = ""
    source: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("cpu_affinity", "input_shape"):  # YAML gives lists; keep the profile hashable
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _validate(self)

    # -- derived values ------------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        return self.agent_url is not None

    @property
    def expensive_to_measure(self) -> bool:
        """TensorRT engine builds and measurements on a remote agent cost far more than a candidate's
        prediction: searches screen their candidates with the latency predictor (search.screen.mode=auto)."""
        return self.runtime == "tensorrt" or self.is_remote

    @property
    def uses_cuda(self) -> bool:
        if self.runtime == "onnxruntime":
            return self.provider != "CPUExecutionProvider"
        return self.device.startswith("cuda")

    def check_cores(self) -> None:
        """Raise ProfileError when the profile asks for more threads than this machine has cores (a
        runtime given 10000 threads hangs in native code, where no signal reaches it). Checked where the
        profile is measured: here by check_ready, on its machine by the agent."""
        cores = os.cpu_count() or 1
        for name in ("threads", "inter_op_threads"):
            value = getattr(self, name)
            if isinstance(value, int) and value > cores:
                raise ProfileError(f"hardware profile {_show(self.name)}: field '{name}' is {value} but this machine "
                                   f"has {cores} cores: use at most {cores} (or threads: all)")

    def thread_count(self) -> int:
        """Intra-op threads as a number ("all" = every core of the machine that measures)."""
        return (os.cpu_count() or 1) if self.threads == "all" else int(self.threads)

    def digest(self) -> str:
        """Hash of everything that affects a measurement (not the name, description or credentials)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_HASHED}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if k != "source"}

    def for_agent(self) -> dict:
        """The fields an agent needs to measure locally (no URL, no token source, no file paths)."""
        return {k: v for k, v in self.to_dict().items() if k not in CLIENT_ONLY_FIELDS}


def _validate(p: HardwareProfile) -> None:
    def bad(field_name: str, why: str) -> ProfileError:
        return ProfileError(f"hardware profile {_show(p.name)}: field '{field_name}' {why}")

    def positive_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if p.runtime not in RUNTIMES:
        raise bad("runtime", f"is '{p.runtime}'; choose one of {list(RUNTIMES)}")
    if not (p.threads == "all" or positive_int(p.threads)):
        raise bad("threads", f"must be a positive integer or \"all\", got {_show(p.threads)}")
    if not isinstance(p.name, str) or not 0 < len(p.name) <= 100 or not p.name.isprintable():
        raise bad("name", f"must be a printable string of 1-100 characters, got {_show(p.name)}")
    if not isinstance(p.description, str) or len(p.description) > 1000:
        raise bad("description", f"must be a string of at most 1000 characters, got {_show(p.description)}")
    for name in ("inter_op_threads", "batch_size", "min_repeats", "max_repeats", "round_to", "workspace_mb"):
        if not positive_int(getattr(p, name)):
            raise bad(name, f"must be a positive integer, got {_show(getattr(p, name))}")
    if not isinstance(p.warmup_runs, int) or isinstance(p.warmup_runs, bool) or p.warmup_runs < 0:
        raise bad("warmup_runs", f"must be an integer >= 0, got {_show(p.warmup_runs)}")
    if p.max_repeats < p.min_repeats:
        raise bad("max_repeats", f"({p.max_repeats}) must be >= min_repeats ({p.min_repeats})")
    if not isinstance(p.target_rel_ci, (int, float)) or not 0 < p.target_rel_ci < 1:
        raise bad("target_rel_ci", f"must be in (0, 1), got {_show(p.target_rel_ci)}")
    for name in ("max_seconds", "agent_timeout_s"):
        value = getattr(p, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise bad(name, f"must be a number > 0, got {_show(value)}")
    if p.graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise bad("graph_optimization", f"must be one of {list(GRAPH_OPTIMIZATIONS)}, got {_show(p.graph_optimization)}")
    for name in ("sparse_weights", "io_binding", "profile_layers", "cuda_graphs"):
        if not isinstance(getattr(p, name), bool):
            raise bad(name, f"must be true or false, got {_show(getattr(p, name))}")
    if not isinstance(p.provider, str) or not p.provider.endswith("ExecutionProvider"):
        raise bad("provider", f"must be an ONNX Runtime provider such as CPUExecutionProvider, got {_show(p.provider)}")
    if not isinstance(p.device, str) or not _DEVICE.match(p.device):
        raise bad("device", f"must be cpu, cuda or cuda:N, got {_show(p.device)}")
    if p.runtime == "tensorrt" and not p.device.startswith("cuda"):
        raise bad("device", "must be cuda or cuda:N for runtime tensorrt")
    if p.precision not in PRECISIONS:
        raise bad("precision", f"must be one of {list(PRECISIONS)}, got {_show(p.precision)}")
    if p.precision == "fp16" and not (p.uses_cuda or p.runtime == "torch"):   # torch has fp16 CPU kernels too
        raise bad("precision", "fp16 needs a GPU here: use precision fp32 on the CPU, a CUDA provider/device, "
                               "or runtime torch")
    if p.precision == "int8" and not (p.runtime == "onnxruntime" and p.provider == "CPUExecutionProvider"):
        raise bad("precision", "int8 (static QDQ quantization) is supported for runtime onnxruntime with "
                               "provider CPUExecutionProvider: use precision fp32 or fp16 here")
    if p.sparse_weights and p.runtime != "tensorrt":
        raise bad("sparse_weights", "is only supported by runtime tensorrt (2:4 sparse tensor cores)")
    if p.cuda_graphs and not (p.runtime == "torch" and p.uses_cuda):
        raise bad("cuda_graphs", "needs runtime torch on a cuda device")
    if p.cpu_affinity is not None and not _int_list(p.cpu_affinity, minimum=0):
        raise bad("cpu_affinity", f"must be a non-empty list of core ids, got {_show(p.cpu_affinity)}")
    if p.input_shape is not None and not _int_list(p.input_shape, minimum=1):
        raise bad("input_shape", f"must be a non-empty list of positive integers, got {_show(p.input_shape)}")
    if p.agent_url is not None and not (isinstance(p.agent_url, str) and _URL.match(p.agent_url)):
        raise bad("agent_url", f"must look like http://host:port, got {_show(p.agent_url)}")
    if p.agent_url is not None and p.runtime == "torch":
        raise bad("runtime", "torch cannot be measured by an agent (it takes ONNX models only): "
                             "use onnxruntime or tensorrt with agent_url")
    kind, _, where = p.agent_token.partition(":") if isinstance(p.agent_token, str) else ("", "", "")
    if kind not in ("env", "file") or not where:
        raise bad("agent_token", f"must be \"env:VARIABLE\" or \"file:PATH\", got {_show(p.agent_token)}")


def _show(value) -> str:
    """repr() for error messages, bounded: a nested alias bomb prints as a few characters."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 6, 6, 60, 60
    return short.repr(value)


def _int_list(values, minimum: int) -> bool:
    return isinstance(values, (list, tuple)) and len(values) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)


def profile_from_dict(data: dict, origin: str = "profile") -> HardwareProfile:
    """Build a profile from a mapping, rejecting unknown keys (used for YAML files and agent requests)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{origin} must be a mapping of field: value")
    known = {f.name for f in dataclasses.fields(HardwareProfile)} - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{origin}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    if not isinstance(data.get("name", ""), str):
        raise ProfileError(f"{origin}: field 'name' must be a string")
    try:
        return HardwareProfile(**data)
    except TypeError as exc:  # a missing name
        raise ProfileError(f"{origin}: {exc}") from None


def load_profile(name_or_path: str) -> HardwareProfile:
    """Load `hw_profiles/<name>.yaml` or a YAML file by path; errors name the file and field."""
    path = resolve_yaml("hw_profiles", str(name_or_path))
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"hardware profile {path} is not valid YAML ({yaml_problem(exc)}): fix its syntax") from None
    if not isinstance(data, dict):
        raise ProfileError(f"hardware profile {path} must be a YAML mapping of field: value")
    too_large = yaml_size_problem(data, limit=1000)
    if too_large:
        raise ProfileError(f"hardware profile {path} is not a flat mapping of field: value ({too_large}): fix the file")
    data.setdefault("name", Path(path).stem)
    profile = profile_from_dict(data, f"hardware profile {path}")
    return dataclasses.replace(profile, source=str(path))
