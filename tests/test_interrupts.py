"""autoprune.interrupts with real signals, in a fresh process (its handlers are process-wide).

The child loads interrupts.py from its file: the module uses only the standard library, and importing
the `autoprune` package (torch, ONNX Runtime, ...) would cost each child seconds of CPU for nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, signal

steps = []
interrupts.install()
try:
    with interrupts.held():                       # a trial's bookkeeping
        signal.raise_signal(signal.SIGTERM)       # held: the bookkeeping goes on
        steps.append("bookkeeping done")
        try:
            with interrupts.allowed():            # the trial's evaluation: the held signal lands on entry
                steps.append("evaluated")
        except KeyboardInterrupt:
            steps.append("interrupted at evaluation")
            signal.raise_signal(signal.SIGINT)    # a second signal during the cleanup: noted only
            steps.append("cleanup done")
            raise
except KeyboardInterrupt:
    steps.append("ended")
print(json.dumps(steps))
"""

BETWEEN = """
import json, signal

steps = []
interrupts.install()
try:
    with interrupts.held():
        signal.raise_signal(signal.SIGINT)
        steps.append("last trial logged")
        interrupts.check()                        # between two trials: the held signal lands here
        steps.append("next trial claimed")
except KeyboardInterrupt:
    steps.append("ended")
print(json.dumps(steps))
"""


# What the scripts start with: `interrupts`, this checkout's autoprune/interrupts.py, the real module.
LOAD = f"""
import importlib.util
_spec = importlib.util.spec_from_file_location("autoprune.interrupts", {str(ROOT / "autoprune" / "interrupts.py")!r})
interrupts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interrupts)
"""


def _run(script: str) -> subprocess.CompletedProcess:
    # the timeout only ends a hung test
    return subprocess.run([sys.executable, "-c", LOAD + script], capture_output=True, text=True, env=os.environ,
                          timeout=600)


def test_a_held_signal_lands_at_the_evaluation_and_a_second_one_waits_for_the_cleanup():
    done = _run(SCRIPT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["bookkeeping done", "interrupted at evaluation", "cleanup done", "ended"]
    assert "still closing the open trial" in done.stderr


def test_a_signal_held_during_bookkeeping_lands_between_two_trials():
    done = _run(BETWEEN)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["last trial logged", "ended"]
