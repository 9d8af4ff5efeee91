"""Run `python -m autoprune ...` as a fresh process per call without paying its imports every time.

Most of a failing CLI call is spent importing torch, MLflow, Optuna and Hydra (about 5 s of 6 here).
`ForkedCli` starts one server process that imports them once, then forks a child per call: the child
is a new process (own cwd, environment, file descriptors, exit status) that runs the real entry point
`autoprune.__main__` exactly as `python -m autoprune` would, with the modules already loaded. Nothing is
mocked; the tests that use it (test_bad_input.py) see the same stderr and exit status a user sees.

Run as a script it is the server: JSON requests on stdin, one per line, JSON replies on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Imported by the server before it forks. NNI stays out: a case shadows it with a broken package.
PRELOAD = ("torch", "onnx", "onnxruntime", "optuna", "mlflow", "sqlalchemy", "hydra", "omegaconf", "sklearn",
           "autoprune.cli", "autoprune.search.runner", "autoprune.pick", "autoprune.reproduce")


@dataclass(frozen=True)
class Result:
    """What subprocess.run would give: exit status and both streams."""
    returncode: int
    stdout: str
    stderr: str


class ForkedCli:
    """`run(args, cwd, env)` -> Result of `python -m autoprune *args` in `cwd` with environment `env`."""

    def __init__(self):
        self.server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, cwd=Path(__file__).parent)
        ready = self.server.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the forked-CLI server did not start: {ready!r}")

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout_s: int = 300) -> Result:
        request = {"args": list(args), "cwd": str(cwd), "env": dict(env), "timeout_s": timeout_s}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        if not reply:
            raise RuntimeError("the forked-CLI server died")
        return Result(**json.loads(reply))

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


def _child(request: dict, out: Path, err: Path) -> None:
    """In the forked child: become `python -m autoprune <args>` and exit with its status."""
    import runpy
    import signal
    import traceback

    signal.alarm(int(request["timeout_s"]))           # a hanging call dies (status -SIGALRM) instead of the run
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = extra                               # what the interpreter would have done with PYTHONPATH
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY), (2, err, os.O_WRONLY)):
        target = os.open(path, mode)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [str(Path(__file__).parents[1] / "autoprune" / "__main__.py"), *request["args"]]
    code = 0
    try:
        runpy.run_module("autoprune", run_name="__main__", alter_sys=True)
    except SystemExit as exc:                          # the interpreter's own rules for exit statuses
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve() -> None:
    import importlib
    import threading

    for name in PRELOAD:
        importlib.import_module(name)
    assert "nni" not in sys.modules, "the server must not import NNI (a case shadows it)"
    assert threading.active_count() == 1, "no threads before fork: a child could inherit a held lock"
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            pid = os.fork()
            if pid == 0:
                try:
                    _child(request, out, err)
                finally:
                    os._exit(1)                        # never back into this loop
            _, status = os.waitpid(pid, 0)
            reply = Result(os.waitstatus_to_exitcode(status), out.read_text(errors="replace"),
                           err.read_text(errors="replace"))
        print(json.dumps(reply.__dict__), flush=True)
    os._exit(0)                                        # stdin closed: skip tearing down torch, MLflow, ...


if __name__ == "__main__":
    _serve()
