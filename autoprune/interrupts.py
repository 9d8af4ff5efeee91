"""Ctrl-C and SIGTERM end a search cleanly: at a point where it can close what is open, never in the
middle of its bookkeeping.

`install()` (the CLI does it) turns SIGINT and SIGTERM into one KeyboardInterrupt. Inside `held()`
(a trial's bookkeeping: claiming it, starting its MLflow run, telling Optuna, logging results) a
signal is only recorded. It is raised at the next `check()` (between two trials), on entering the
next `allowed()` block (a trial's evaluation, which the interrupt then fails and retries), or when
the outermost `held()` block ends. Library code that swallows KeyboardInterrupt (a bare `except:`)
is run `held()` where it is known (torch-pruning's tracing); an interrupt swallowed elsewhere inside
`allowed()` is raised again when that block ends. Once an interrupt has been raised the process is closing what is
open: later signals are noted on stderr and otherwise ignored (`kill -9` still ends it at once).

Without `install()` (the Python API) the blocks change nothing: signals keep their own handlers.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Gate:
    installed = False
    holding = 0                    # depth of held() blocks (0 inside allowed())
    pending: Optional[int] = None  # a signal received while held
    closing = False                # an interrupt was raised: the process is ending

    def handle(self, signum: int, frame) -> None:
        if self.closing:
            os.write(2, b"autoprune: still closing the open trial and runs (kill -9 ends at once)\n")
            return
        if self.holding:
            self.pending = signum
            return
        self.interrupt()

    def interrupt(self) -> None:
        self.closing, self.pending = True, None
        raise KeyboardInterrupt


_gate = _Gate()


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (once), subject to `held()`; main thread only."""
    for signum in SIGNALS:
        signal.signal(signum, _gate.handle)
    _gate.installed = True


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A signal inside is raised when the outermost held block ends (or at an inner `allowed()`)."""
    _gate.holding += 1
    try:
        yield
    finally:
        _gate.holding -= 1
    if not _gate.holding and _gate.pending is not None and _gate.installed:
        _gate.interrupt()


@contextlib.contextmanager
def allowed() -> Iterator[None]:
    """Inside a held block: signals are raised at once again, a held one on entry. An interrupt raised
    inside and swallowed there (library code with a bare `except:`, e.g. torch-pruning's tracing) is
    raised again when the block ends."""
    saved, _gate.holding = _gate.holding, 0
    closing = _gate.closing
    try:
        if _gate.pending is not None and _gate.installed:
            _gate.interrupt()
        yield
    finally:
        _gate.holding = saved
    if _gate.closing and not closing:
        raise KeyboardInterrupt


def check() -> None:
    """Inside a held block, at a point where nothing is half-done: raise a held signal now."""
    with allowed():
        pass
