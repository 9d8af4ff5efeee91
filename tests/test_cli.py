"""The command line as a user runs it (subprocesses, real exit codes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("args, message", [
    (["hw=raspberry-pi-9"], "unknown hw_profiles 'raspberry-pi-9'"),
    (["search.sampler=magic"], "unknown search.sampler 'magic'"),
    (["task.checkpoint=/no/such/file.pt"], "checkpoint not found: /no/such/file.pt"),
    (["search.storage=nosuchdb://x"], "cannot open search.storage"),
    (["search_space=missing.yaml"], "search_spaces file not found"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(tmp_path, args, message):
    result = autoprune(*args, "task.train.epochs=0", "search.n_trials=0", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("autoprune: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_refused(tmp_path):
    result = autoprune("search.n_trails=3", cwd=tmp_path)
    assert result.returncode != 0
    assert "n_trails" in result.stderr and "Traceback" not in result.stderr
