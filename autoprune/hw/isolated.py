"""One measurement in a child process that a deadline kills.

A model can run for ever (a Loop with 2**62 iterations), ask for more memory than the machine has, or
hang the runtime; none of that can be interrupted inside the process that runs it. `measure_in_child`
runs the measurement in a fresh child (forked from a preloaded fork server where the platform has one,
spawned otherwise), waits for its answer until the deadline and then kills it: the machine-wide
measurement lock it held (an flock) goes with it. The answer comes back as JSON, never as a pickle.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Callable

from autoprune.errors import AutopruneError, MeasurementError, first_line
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats

MeasureFn = Callable[[Path, HardwareProfile], LatencyStats]  # must be a module-level function
PRELOAD = ["autoprune.hw.isolated", "autoprune.hw.onnxruntime_backend"]
CHILD_NAME = "autoprune-measure"
_running: set = set()  # children measuring now (stop_children kills them)


class MeasurementRejected(MeasurementError):
    """The measurement raised (a bad profile for this model, an error of the runtime, out of memory)."""


class MeasurementTimedOut(MeasurementError):
    """The deadline passed; the child was killed."""


class MeasurementCrashed(MeasurementError):
    """The child died without an answer (killed by a signal, e.g. the out-of-memory killer)."""


def measure_here(onnx_path: Path, profile: HardwareProfile) -> LatencyStats:
    """The measurement itself: the profile's runtime on this machine."""
    from autoprune.hw.backend import runtime_backend

    return runtime_backend(profile).measure(onnx_path, profile)


def preload(*modules: str) -> None:
    """Import `modules` in the fork server too (call before the first child starts). A child re-runs the
    parent's main script when it was started as a script (the `autoprune` console script imports
    autoprune.cli): preloading what that script imports keeps each child's start cheap."""
    PRELOAD.extend(m for m in modules if m not in PRELOAD)


def _context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # imports paid once, not per measurement
        return context
    return multiprocessing.get_context("spawn")


def _nothing() -> None:
    pass


def start_children() -> None:
    """Start the fork server now and wait until it is ready (its imports take seconds), so that the
    first measurement's deadline is not spent on them."""
    child = _context().Process(target=_nothing, name="autoprune-warm-up", daemon=True)
    child.start()
    child.join()


def stop_children() -> None:
    """Kill every measuring child (the agent is shutting down); their callers raise MeasurementCrashed."""
    for child in list(_running):
        child.kill()


def _child(send, measure: MeasureFn, onnx_path: str, profile: HardwareProfile) -> None:
    try:
        outcome: dict[str, object] = {"stats": measure(Path(onnx_path), profile).to_dict()}
    except AutopruneError as exc:
        outcome = {"error": str(exc)}
    except MemoryError:
        outcome = {"error": "the model ran out of memory: lower batch_size or input_shape"}
    except Exception as exc:  # the runtime's own errors (onnxruntime Fail, RuntimeError, ...)
        reason = first_line(exc)
        if "Failed to allocate memory" in reason:  # onnxruntime's arena
            outcome = {"error": "the model ran out of memory (" + reason.rsplit("Failed to allocate memory", 1)[1]
                       .strip() + "): lower batch_size or input_shape"}
        else:
            outcome = {"error": f"the model failed to run: {reason}"}
    send.send_bytes(json.dumps(outcome).encode())


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        hint = " (often the out-of-memory killer)" if exitcode == -signal.SIGKILL else ""
        return f"killed by signal {name}{hint}"
    return f"exited with status {exitcode}"


def measure_in_child(measure: MeasureFn, onnx_path: Path, profile: HardwareProfile, deadline: float) -> LatencyStats:
    """`measure(onnx_path, profile)` in a child process; `deadline` is a time.monotonic() value. Raises
    MeasurementTimedOut (child killed), MeasurementCrashed or MeasurementRejected; the child is gone
    when this returns or raises."""
    if time.monotonic() >= deadline:
        raise MeasurementTimedOut("the deadline passed before the measurement started")
    context = _context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, measure, str(onnx_path), profile), name=CHILD_NAME,
                            daemon=True)
    try:
        child.start()
        _running.add(child)
        send.close()
        if not receive.poll(max(0.0, deadline - time.monotonic())):
            raise MeasurementTimedOut("the measurement did not finish before the deadline")
        try:
            outcome = json.loads(receive.recv_bytes())
        except EOFError:  # the child closed the pipe by dying
            child.join()
            raise MeasurementCrashed(f"the measuring process died: {_death(child.exitcode)}") from None
    finally:
        _running.discard(child)
        if child.is_alive():
            child.kill()
        if child.pid is not None:
            child.join()
        send.close()
        receive.close()
    if "error" in outcome:
        raise MeasurementRejected(outcome["error"])
    return LatencyStats.from_dict(outcome["stats"])
