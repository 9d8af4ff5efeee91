"""The command line as a user runs it, a process per call with real exit codes and streams: `--help` from a
fresh interpreter, the others forked from one that has the imports loaded (forked_cli.py). Mistakes are
catalogued in test_bad_input.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}   # this checkout's autoprune


@pytest.fixture
def autoprune(forked_cli):
    """`autoprune(*args, cwd=...)`: `python -m autoprune *args` in cwd, forked (forked_cli.py)."""
    return lambda *args, cwd: forked_cli.run(list(args), cwd=cwd, env=ENV)


def test_help_lists_modes_profiles_spaces_and_main_overrides(tmp_path):
    from autoprune.cli import MODES
    from autoprune.resources import resource_dir

    # a fresh interpreter, as a user starts it: the one test here that pays for the imports
    result = subprocess.run([sys.executable, "-m", "autoprune", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    for mode in (*MODES, "agent"):  # one line each
        assert len([line for line in lines if line.startswith(f"  {mode} ")]) == 1, mode
    for folder in ("hw_profiles", "search_spaces", "conf/task"):
        for path in resource_dir(folder.split("/")[0]).joinpath(*folder.split("/")[1:]).glob("*.yaml"):
            assert any(line.startswith(f"  {path.stem} ") for line in lines), path
    assert "search.n_trials=<int>" in result.stdout and "--cfg job" in result.stdout
    assert len(lines) < 80 and "n_trials: 24" not in result.stdout   # not the config dump
    assert not (tmp_path / "outputs").exists()


def test_mode_help_gives_that_modes_keys_with_comments_and_defaults(autoprune, tmp_path):
    result = autoprune("pick", "--help", cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("usage: python -m autoprune pick") and "register it in the MLflow Model Registry" in out
    assert "min_accuracy: null      # validation accuracy in [0, 1]" in out and "alias: deploy" in out
    assert "search.storage: sqlite:///autoprune.db" in out and "n_trials" not in out and "prune:" not in out


def test_every_mode_help_finds_its_keys_in_the_shipped_config():
    from autoprune.cli import MODES
    from autoprune.usage import MODE_KEYS, MODES as DESCRIBED, mode_help

    assert set(DESCRIBED) == {*MODES, "agent"} and set(MODE_KEYS) == set(MODES)
    for mode, keys in MODE_KEYS.items():
        text = mode_help(mode)
        for key in keys:
            assert re.search(rf"^{re.escape(key)}:", text, re.M), (mode, key)


def test_misspelt_mode_suggests_the_closest(autoprune, tmp_path):
    result = autoprune("reprot", "reproduce.trial=3", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("autoprune: error: unknown mode 'reprot': did you mean report? ")
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_shows_the_composed_config(autoprune, tmp_path):
    result = autoprune("--cfg", "job", "search.n_trials=7", cwd=tmp_path)
    assert result.returncode == 0
    assert "n_trials: 7" in result.stdout and "hw: cpu-ort-1t" in result.stdout


def test_a_read_only_working_directory_is_one_line_and_exit_2(autoprune, tmp_path):
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
