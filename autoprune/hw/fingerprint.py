"""Environment fingerprint recorded with every latency number."""

from __future__ import annotations

import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(runtime: str, runtime_version: str, provider: str, precision: str, threads: int) -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "runtime": runtime,
        "runtime_version": runtime_version,
        "provider": provider,
        "precision": precision,
        "threads": threads,
    }
