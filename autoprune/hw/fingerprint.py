"""Environment fingerprint recorded with every latency number, and a key for caching by machine."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):  # x86 / Raspberry Pi
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(runtime: str, runtime_version: str, provider: str, precision: str, threads: int,
                device: str = "cpu", **extra) -> dict:
    """Where a number was taken: CPU model, cores, runtime + version, provider, device, precision, threads."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "runtime": runtime,
        "runtime_version": runtime_version,
        "provider": provider,
        "device": device,
        "precision": precision,
        "threads": threads,
        **extra,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def machine_key() -> str:
    """Hash of this machine and its runtimes: cached latencies are only reused on the same one."""
    data = {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "node": platform.node(),
            "versions": {d: _version(d) for d in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt")}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
