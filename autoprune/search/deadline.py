"""A wall-clock limit for one trial (`search.trial_timeout_s`).

SIGALRM raises TrialTimeout in the main thread, so a hung candidate ends as a failed trial and the
search goes on. Python delivers the signal between bytecodes: a single long native call (one ONNX
Runtime run, one torch kernel) finishes before the trial stops. Off the main thread (or on
platforms without SIGALRM) no limit is applied.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

from autoprune.errors import AutopruneError


class TrialTimeout(AutopruneError):
    pass


@contextlib.contextmanager
def deadline(seconds: Optional[float], limit: Optional[float] = None) -> Iterator[None]:
    """Raise TrialTimeout after `seconds`; `limit`: the setting named in the message (default `seconds`)."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TrialTimeout(f"trial ran longer than search.trial_timeout_s={limit or seconds}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
