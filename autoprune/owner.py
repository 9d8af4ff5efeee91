"""Which process owns a running trial or run, and whether that process is certainly gone.

A worker killed with kill -9 leaves its trial RUNNING in Optuna and its runs RUNNING in MLflow.
Everything a search starts is stamped `host/ns:pid:start` (ns = the PID namespace, so containers
that share a host name but not their processes never judge each other's; start = the process's
start time, so a recycled pid is not mistaken for the original); the next search on the same host
and namespace closes what a dead owner left behind at once, without waiting for heartbeats to go
stale.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux); None where unavailable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot)."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _machine() -> str:
    """`host/ns`: the host name and the PID namespace (processes this one can see and signal)."""
    try:
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))  # 'pid:[4026531836]'
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}/{namespace}"


@functools.lru_cache(maxsize=None)
def _owner(pid: int) -> str:
    return f"{_machine()}:{pid}:{_start_ticks(pid) or '-'}"


def process_owner() -> str:
    """This process as `host/ns:pid:start` (computed once per process; a forked child gets its own)."""
    return _owner(os.getpid())


def owner_is_dead(owner: str | None) -> bool:
    """True only when `owner` is a process of this host and PID namespace that is certainly gone; a
    process of another host or container (or an unknown owner) is left to the heartbeat."""
    try:
        machine, pid_text, start = (owner or "").rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if machine != _machine():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    fields = _stat(pid)
    if fields is None:
        return False
    return fields[0] in ("Z", "X") or (start != "-" and fields[19] != start)  # a zombie, or a recycled pid
