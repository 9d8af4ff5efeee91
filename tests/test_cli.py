"""The command line as a user runs it (subprocesses, real exit codes); mistakes are catalogued in
test_bad_input.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def autoprune(*args, cwd):
    return subprocess.run([sys.executable, "-m", "autoprune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "tests")})


def test_help(tmp_path):
    result = autoprune("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Config groups" in result.stdout and "task: " in result.stdout and "n_trials: 24" in result.stdout


def test_cfg_job_shows_the_composed_config(tmp_path):
    result = autoprune("--cfg", "job", "search.n_trials=7", cwd=tmp_path)
    assert result.returncode == 0
    assert "n_trials: 7" in result.stdout and "hw: cpu-ort-1t" in result.stdout
