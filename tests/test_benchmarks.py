"""Smoke tests: the benchmark scripts stay runnable (tiny budgets; numbers are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow   # whole benchmark scripts
def test_search_quality_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search_quality.py"), "--trials", "2", "--seeds", "0",
         "--methods", "uniform", "flops", "allocate", "--workdir", str(tmp_path), "--override", *FAST],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert all(any(line.startswith(f"{row} ") for line in lines)
               for row in ("uniform", "flops", "allocate", "union", "ceiling"))


@pytest.mark.slow
def test_throughput_script_runs(tmp_path):
    from test_workers import _pg_available

    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--trials", "2", "--override", *FAST],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed-up of 2 workers" in result.stdout and "export + measure" in result.stdout


@pytest.mark.slow   # whole benchmark scripts
def test_realized_speedup_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "realized_speedup.py"), "--hw", str(ROOT / "tests" / "data" /
         "fast-cpu.yaml"), "--ratios", "0.5", "--models", "resnet_small", "cnn1d"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("resnet_small", "cnn1d"))]
    assert len(rows) == 4 and all(0 < float(r[3]) < 1 for r in rows)   # MACs ratio of a 50 % prune


@pytest.mark.slow   # whole benchmark scripts
def test_memory_script_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--trials", "3", "--warmup", "1",
                             "--override", f"hw={ROOT / 'tests' / 'data' / 'fast-cpu.yaml'}"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 trials in" in result.stdout and "MB per 100 trials" in result.stdout


@pytest.mark.slow   # whole benchmark scripts
def test_rung0_tau_script_runs(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "rung0_tau.py"), "--workdir", str(tmp_path), "--label", "t"]
    result = subprocess.run([*script, "--plans", "3", "--override", *FAST], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rung 0 (adaptive_bn) |" in result.stdout and "| raw (pruned, no recovery) |" in result.stdout
    again = subprocess.run([*script, "--plans", "0"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "3 random plans" in again.stdout   # the table from the record alone


@pytest.mark.slow
def test_cross_target_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cross_target.py"), "--trials", "2", "--seeds", "0", "--rounds", "1",
         "--workdir", str(tmp_path), "--override", *FAST[1:]],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "within 1 pt test" in out and "within 2 pt test" in out and "FLOPs-proxy" in out
    assert all(any(line.strip().startswith(name) for line in out.splitlines())
               for name in ("cpu-ort-1t", "cpu-ort-int8-1t", "cpu-ort-b32", "flops"))


@pytest.mark.slow   # whole benchmark scripts
def test_default_search_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "default_search.py"), "--seeds", "0", "--workdir", str(tmp_path),
         "--", *FAST, "search.n_trials=2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| seed | wall |" in result.stdout and "seeds with a model >= 3x within 1 pt test:" in result.stdout
    assert (tmp_path / "default-s0" / "out" / "report" / "pareto.json").exists()


@pytest.mark.slow   # whole benchmark scripts
def test_channel_granularity_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "channel_granularity.py"), "--layer", "linear", "--outer", "16",
         "--widths", "6", "9", "--rounds", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("width")) + 1:][:4]
    assert [int(line.split()[0]) for line in table] == [6, 7, 8, 9]
    assert all(len(line.split()) == 3 and float(line.split()[1]) > 0 < float(line.split()[2]) for line in table)
    k4 = [line for line in lines if line.split()[:1] == ["4"]]
    assert len(k4) == 1 and k4[0].count("(n=2)") == 2   # 6 and 7 round up to 8, 9's multiple 12 is out of range


def test_rounding_cost_counts_widths_whose_next_multiple_is_no_slower():
    import importlib.util

    spec = importlib.util.spec_from_file_location("granularity", ROOT / "benchmarks" / "channel_granularity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    latency = {6: 1.0, 7: 2.0, 8: 1.5, 9: 1.0, 10: 1.0}   # 8 is slower than 6, faster than 7; 10 has no multiple
    free, ratio, n = module.rounding_cost(latency, 4, tolerance=0.02)
    assert (free, ratio, n) == (0.5, (1.5 / 1.0 + 1.5 / 2.0) / 2, 2)
    assert module.rounding_cost(latency, 64, 0.02)[2] == 0


@pytest.mark.slow   # whole benchmark scripts
def test_int8_recipe_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_recipe.py"), f"cache_dir={tmp_path / 'cache'}", *FAST],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:28].strip() for line in result.stdout.splitlines()[-9:]}
    assert {"fp32", "autoprune", "every operator", "matrix products only"} <= rows


@pytest.mark.slow   # whole benchmark scripts
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="contention.py needs two cores")
def test_contention_script_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "contention.py"), "--model", "resnet",
                             "--rounds", "1"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "AUTOPRUNE_LOCK_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:16].strip(): line.split()[-3:] for line in result.stdout.splitlines()[-3:]}
    assert set(rows) == {"quiet", "trainer", "trainer, locked"}
    assert rows["quiet"][1] == "1.000x" and float(rows["trainer"][2]) > 0 < float(rows["trainer, locked"][2])


@pytest.mark.slow
def test_retime_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "retime.py"), "--trials", "3", "--rounds", "1", "--period", "1",
         "--workdir", str(tmp_path), "--override", *FAST, "search.warm_start=[0.25,0.5,0.75]"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "measured in the search" in result.stdout and "re-timed (search.retime)" in result.stdout
