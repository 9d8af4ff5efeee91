"""Pre-flight: before the baseline trains, find out which groups autoprune can really prune.

For one model: trace its groups, prune them at a few ratios (all groups at once first; when that
fails, each group alone), export each pruned copy to ONNX, run it with ONNX Runtime and compare its
outputs with the PyTorch model's. The result is a `PreflightReport`: per group, the largest tested
ratio that pruned, exported and matched (0: excluded) and why the next one failed.

`run_preflight` does all of it in a forked child process with a memory limit (RLIMIT_DATA) and a
wall-clock limit, so a trace that explodes (window attention made torch-pruning's trace grow to
tens of GB) or never ends ends as a one-line `PreflightError` naming the phase and the module it was
in, instead of taking the machine down. `probe` is the same check in the calling process (the
architecture benchmark runs it in its own limited child).
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import resource
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.config import PREFLIGHT_KEYS  # the prune keys that set how a model is checked, not what is searched
from autoprune.errors import ConfigError, first_line
from autoprune.plan import PrunePlan

RATIOS = (0.25, 0.5, 0.75)
RTOL = 1e-3          # ONNX Runtime vs PyTorch: max |difference| <= RTOL * max |PyTorch output| + ATOL
ATOL = 1e-5


class PreflightError(ConfigError):
    """The model cannot be handled at all (trace fails, hangs or explodes; no group can be pruned)."""


@dataclass(frozen=True)
class GroupCheck:
    name: str
    max_ratio: float     # the largest tested ratio that pruned, exported and matched; 0.0: excluded
    reason: str = ""     # why the next tested ratio failed ("" when every tested ratio passed)

    @property
    def prunable(self) -> bool:
        return self.max_ratio > 0.0


@dataclass(frozen=True)
class PreflightReport:
    groups: tuple[GroupCheck, ...]
    ratios: tuple[float, ...]
    seconds: float = 0.0
    combined: str = ""    # a failure of the uniform plan that no group alone explains

    @property
    def prunable(self) -> list[str]:
        return [g.name for g in self.groups if g.prunable]

    @property
    def excluded(self) -> dict[str, str]:
        return {g.name: g.reason for g in self.groups if not g.prunable}

    @property
    def limited(self) -> dict[str, float]:
        """Prunable groups that failed a higher tested ratio: group -> largest ratio that passed."""
        return {g.name: g.max_ratio for g in self.groups if g.prunable and g.reason}

    def lines(self) -> list[str]:
        """The report a user reads: one summary line, then one line per excluded or limited group."""
        out = [f"pre-flight ({self.seconds:.1f} s, ratios {list(self.ratios)}): {len(self.prunable)} of "
               f"{len(self.groups)} groups prunable, {len(self.excluded)} excluded"]
        out += [f"  excluded {name}: {reason}" for name, reason in self.excluded.items()]
        out += [f"  limited to ratio {self.limited[g.name]} {g.name}: {g.reason}" for g in self.groups
                if g.name in self.limited]
        if self.combined:
            out.append(f"  all groups together: {self.combined}")
        return out

    def to_dict(self) -> dict:
        return {"groups": [[g.name, g.max_ratio, g.reason] for g in self.groups], "ratios": list(self.ratios),
                "seconds": self.seconds, "combined": self.combined}

    @classmethod
    def from_dict(cls, data: dict) -> "PreflightReport":
        return cls(tuple(GroupCheck(str(n), float(r), str(why)) for n, r, why in data["groups"]),
                   tuple(float(r) for r in data["ratios"]), float(data["seconds"]), str(data.get("combined", "")))


# ------------------------------------------------------------------------------------------ checks
def outputs_match(reference: np.ndarray, other: np.ndarray) -> Optional[str]:
    """None when `other` equals `reference` within the tolerance, else what differs."""
    if reference.shape != other.shape:
        return f"output shape {tuple(other.shape)} instead of {tuple(reference.shape)}"
    if not np.isfinite(other).all() and np.isfinite(reference).all():
        return "ONNX Runtime gives non-finite outputs"
    scale = float(np.abs(reference[np.isfinite(reference)]).max(initial=0.0))
    diff = float(np.nan_to_num(np.abs(reference - other), nan=np.inf).max(initial=0.0))
    if diff > RTOL * scale + ATOL:
        return f"ONNX Runtime outputs differ from PyTorch's by {diff:.3g} (outputs up to {scale:.3g})"
    return None


def run_onnx(path: Path, example: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]


def output_of(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(example)
    return out[0] if isinstance(out, (tuple, list)) else out


def check_model(model: nn.Module, example: torch.Tensor, path: Path,
                expected: Optional[tuple[int, ...]] = None) -> Optional[str]:
    """Export `model`, run it with ONNX Runtime, compare: None when it all works, else the reason.
    `expected`: the unpruned model's output shape, which pruning must keep (the classes)."""
    from autoprune.hw.export import export_onnx

    try:
        reference = output_of(model, example).numpy()
    except Exception as exc:
        return f"the model no longer runs ({type(exc).__name__}: {first_line(exc)[:200]})"
    if expected is not None and tuple(reference.shape) != tuple(expected):
        return (f"the output shape became {tuple(reference.shape)} instead of {tuple(expected)}: the output layer "
                "was pruned (add it to prune.ignore)")
    try:
        export_onnx(model, example, path)
    except Exception as exc:
        return f"export: {first_line(exc.__cause__ or exc)[:200]}"
    try:
        out = run_onnx(path, example)
    except Exception as exc:
        return f"ONNX Runtime: {first_line(exc)[:200]}"
    finally:
        path.unlink(missing_ok=True)
    return outputs_match(reference, out)


def check_plan(model: nn.Module, example: torch.Tensor, pruner, plan: PrunePlan, path: Path,
               expected: Optional[tuple[int, ...]] = None) -> Optional[str]:
    """Prune a copy of `model` with `plan`, then `check_model` it."""
    pruned = copy.deepcopy(model)
    try:
        pruner.apply(pruned, plan)
    except Exception as exc:
        return f"prune: {first_line(exc)[:200]}"
    return check_model(pruned, example, path, expected)


def probe(model: nn.Module, example: torch.Tensor, pruner, ratios: Sequence[float] = RATIOS,
          deadline: Optional[float] = None, phase: Callable[[str], None] = lambda _text: None) -> PreflightReport:
    """Check every group of `model` at `ratios` (see the module doc). `deadline` (time.monotonic()):
    groups not checked by then are excluded as 'not checked'. `phase(text)` is told what runs now."""
    start = time.monotonic()
    ratios = tuple(sorted(float(r) for r in ratios))
    phase("tracing the channel dependencies")
    names = [g.name for g in pruner.groups(model)]
    expected = tuple(output_of(model, example).shape)
    best = {name: 0.0 for name in names}
    reasons: dict[str, str] = {}
    combined = ""
    pending = list(names)
    with tempfile.TemporaryDirectory(prefix="autoprune-preflight-") as tmp:
        path = Path(tmp) / "model.onnx"
        for ratio in ratios:
            if not pending:
                break
            phase(f"pruning all {len(pending)} groups at ratio {ratio}")
            failure = check_plan(model, example, pruner, PrunePlan.uniform(pending, ratio), path, expected)
            if failure is None:
                best.update({name: ratio for name in pending})
                continue
            passed = []
            for name in pending:
                if deadline is not None and time.monotonic() > deadline:
                    reasons.setdefault(name, f"at ratio {ratio}: not checked (pre-flight time limit)")
                    continue
                phase(f"pruning group '{name}' at ratio {ratio}")
                alone = check_plan(model, example, pruner, PrunePlan.uniform([name], ratio), path, expected)
                if alone is None:
                    best[name] = ratio
                    passed.append(name)
                else:
                    reasons[name] = f"at ratio {ratio}: {alone}"
            if len(passed) == len(pending):
                combined = f"at ratio {ratio}: {failure}"
            pending = passed
    groups = tuple(GroupCheck(name, best[name], reasons.get(name, "")) for name in names)
    return PreflightReport(groups, ratios, time.monotonic() - start, combined)


# ------------------------------------------------------------------------------------- the child
def module_in(frames: Sequence[FrameType], model: nn.Module) -> str:
    """The name of the innermost module of `model` that `frames` (outermost first) were working on: a
    local variable holding the module, or a torch-pruning node of it. Where a trace failed or hung."""
    names = {id(m): name for name, m in model.named_modules() if name}
    found = ""
    for frame in frames:
        for value in list(frame.f_locals.values()):
            for candidate in (value, getattr(value, "module", None)):
                if isinstance(candidate, nn.Module) and id(candidate) in names:
                    found = names[id(candidate)]
    return found


def _stack(frame: Optional[FrameType]) -> list[FrameType]:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames[::-1]


def limit_memory(extra_mb: int) -> None:
    """Let this process allocate at most `extra_mb` more MiB of data (heap and private mappings)."""
    used = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                used = int(line.split()[1]) * 1024
    limit = used + int(extra_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _child(conn, model, example, pruner, ratios, memory_mb) -> None:
    """Runs `probe`; every way it ends is one message to the parent, then os._exit (the parent's atexit
    handlers, MLflow's and logging's, must not run in the child)."""
    torch.set_num_threads(1)  # OpenMP is not fork-safe with more than one thread
    current = ["starting"]

    def phase(text: str) -> None:
        current[0] = text
        conn.send(("phase", text))

    def time_up(_signum, frame) -> None:  # the parent's SIGUSR1: say where it is and stop (torch-pruning's
        conn.send(("failed", "time", current[0], "", module_in(_stack(frame), model)))  # tracer catches
        os._exit(0)                                                                          # any exception)

    signal.signal(signal.SIGUSR1, time_up)
    try:
        limit_memory(memory_mb)
        report = probe(model, example, pruner, ratios, phase=phase)
        conn.send(("report", report.to_dict()))
    except BaseException as exc:  # noqa: BLE001  everything ends as a message to the parent
        memory = isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)
        frames: list = []
        link: Optional[BaseException] = exc
        while link is not None:  # outermost first: an exception's frames, then those of its cause
            frames += [frame for frame, _ in traceback.walk_tb(link.__traceback__)]
            link = link.__cause__ or link.__context__
        reason = f"{type(exc).__name__}: {first_line(exc)[:300]}"
        del exc  # what it held (the allocations of a trace that exploded) goes with it
        try:
            conn.send(("failed", "memory" if memory else "error", current[0], reason, module_in(frames, model)))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(0)


def run_preflight(model: nn.Module, example: torch.Tensor, pruner, ratios: Sequence[float] = RATIOS,
                  timeout_s: float = 300.0, memory_mb: int = 4096) -> PreflightReport:
    """`probe` in a forked child limited to `memory_mb` more MiB and `timeout_s` seconds. Raises
    PreflightError when the model cannot be handled at all, naming the phase, the module and the fix."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, model, example, pruner, tuple(ratios), memory_mb),
                            daemon=True)
    child.start()
    send.close()
    current, outcome = "starting", None
    deadline = time.monotonic() + timeout_s  # counted again from the child's first word: its own start is free
    try:
        while outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not receive.poll(remaining):
                if remaining <= 0 or not child.is_alive():
                    break
                continue
            try:
                message = receive.recv()
            except EOFError:
                break
            if message[0] == "phase":
                if current == "starting":
                    deadline = time.monotonic() + timeout_s
                current = message[1]
            else:
                outcome = message
        if outcome is None and child.is_alive():  # time is up: ask where it is, then end it
            assert child.pid is not None  # started, and alive
            os.kill(child.pid, signal.SIGUSR1)
            while receive.poll(10):
                try:
                    message = receive.recv()
                except EOFError:
                    break
                if message[0] != "phase":
                    outcome = message
                    break
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    return _outcome(outcome, current, child.exitcode, timeout_s, memory_mb, type(model).__name__)


def _outcome(outcome, current: str, exitcode, timeout_s: float, memory_mb: int, model_name: str) -> PreflightReport:
    fix = ("add that module to prune.ignore (or set prune.preflight=false to skip this check, "
           "at the risk of the same failure during the search)")
    if outcome is not None and outcome[0] == "report":
        report = PreflightReport.from_dict(outcome[1])
        if not report.prunable:
            first = next(iter(report.excluded.items()), None)
            detail = f" (group '{first[0]}' {first[1]})" if first else ""
            raise PreflightError(f"pre-flight: no group of task.model ({model_name}) can be pruned, exported and "
                                 f"run{detail}: add its layers to prune.ignore or replace them with standard modules")
        return report
    if outcome is None:  # died without a word (killed by the kernel, a crash in native code)
        how = f"was killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else (
            f"exited with status {exitcode}" if exitcode not in (None, 0) else f"ran past {timeout_s:.0f} s")
        raise PreflightError(f"pre-flight of task.model ({model_name}) {how} while {current}: {fix}")
    _, kind, phase, reason, module = outcome
    where = f" in module '{module}'" if module else ""
    if kind == "time":
        what = f"ran past its {timeout_s:.0f} s limit"
    elif kind == "memory":
        what = f"needed more than its {memory_mb} MiB memory limit"
    else:
        what = f"failed ({reason})"
    raise PreflightError(f"pre-flight of task.model ({model_name}) {what} while {phase}{where}: {fix}")


def bounded_output_layers(model: nn.Module, example: torch.Tensor, timeout_s: float) -> list[str]:
    """`output_layers` (one forward with autograd on, in this process: its result is needed here) within
    `timeout_s`: a forward that never ends under autograd is stopped with the module named, like the
    pre-flight's own trace (the interrupt lands between Python bytecodes)."""
    from autoprune.prune import output_layers
    from autoprune.search.deadline import TrialTimeout, deadline

    try:
        with deadline(timeout_s):
            return output_layers(model, example)
    except TrialTimeout as exc:
        frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
        module = module_in(frames, model)
        where = f" in module '{module}'" if module else ""
        raise PreflightError(f"pre-flight of task.model ({type(model).__name__}) ran past its {timeout_s:.0f} s limit "
                             f"while finding the output layers{where}: add that module to prune.ignore (or set "
                             "prune.preflight=false to skip this check, at the risk of the same failure during the "
                             "search)") from None


__all__ = ["GroupCheck", "bounded_output_layers", "PREFLIGHT_KEYS", "PreflightError", "PreflightReport", "RATIOS", "check_model",
           "check_plan", "limit_memory", "module_in", "output_of", "outputs_match", "probe", "run_preflight"]
