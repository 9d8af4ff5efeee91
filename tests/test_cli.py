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


def test_a_read_only_working_directory_is_one_line_and_exit_2(tmp_path):
    import pytest

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = autoprune("search.n_trials=1", cwd=ro)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not writable" in lines[0] and "cd to a writable directory" in lines[0]
