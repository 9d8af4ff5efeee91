"""A server process for a test: started on a free loopback port, waited for until it answers, and ended
with the processes it started (mlflow server, mlflow models serve and the uvicorn/gunicorn under them)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: Callable[[int], list[str]], ready_path: str, log_path: Path, **popen) -> Iterator[str]:
    """`command(port)` running until the block ends; yields its base URL once `ready_path` answers. Waits
    for an event (an answer, or the process ending: the test fails with its log), never for a fixed time."""
    port = free_port()
    argv = command(port)
    with open(log_path, "w") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    urllib.request.urlopen(base + ready_path, timeout=5)
                    break
                except OSError:   # refused, reset, or no answer in time (URLError and TimeoutError are OSErrors)
                    if server.poll() is not None:
                        pytest.fail(f"{' '.join(argv[:3])} ended: {Path(log_path).read_text()[-3000:]}")
                    time.sleep(0.5)
            yield base
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
