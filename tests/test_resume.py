"""Crash and resume on SQLite, as a user meets it: a real `python -m autoprune` killed mid-trial, then
the same command again; and two workers sharing one SQLite study."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import FAST

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # this checkout's autoprune


def _command(tmp_path: Path, n_trials: int) -> list[str]:
    return [sys.executable, "-m", "autoprune", *FAST, "recover.epochs=3", "search.warm_start=[0.5,0.25]",
            f"search.n_trials={n_trials}", "search.study_name=resume",
            f"search.storage=sqlite:///{tmp_path / 'optuna.db'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"cache_dir={tmp_path / 'cache'}"]


def _states(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT state FROM trials ORDER BY number")]
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _in_evaluation(db: Path) -> bool:
    """A RUNNING trial whose MLflow run has its params: the search is in that trial's evaluation."""
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            runs = [row[0].strip('"') for row in conn.execute(
                "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'")]
        with sqlite3.connect(db.parent / "mlflow.db", timeout=30) as conn:
            return any(conn.execute("SELECT 1 FROM params WHERE run_uuid = ?", (run,)).fetchone() for run in runs)
    except sqlite3.OperationalError:  # tables not created yet
        return False


def _wait_until_mid_trial(proc: subprocess.Popen, db: Path, completed: int, timeout: float = 600) -> None:
    """Until `completed` trials are complete and the next one is in its evaluation (an event, polled:
    `timeout` only ends a hung test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if _states(db).count("COMPLETE") >= completed and _in_evaluation(db):
            return
        time.sleep(0.05)
    raise AssertionError(f"no running trial after {completed} complete ones within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_search_resumes_to_exactly_the_asked_trials(tmp_path, sig):
    db = tmp_path / "optuna.db"
    first = subprocess.Popen(_command(tmp_path, 4), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_until_mid_trial(first, db, completed=2)
    first.send_signal(sig)
    _, err = first.communicate(timeout=60)
    if sig == signal.SIGTERM:  # a graceful end: the open trial and runs are closed by the process itself
        assert first.returncode == 130, err[-3000:]
        assert "run the same command again to resume" in err and "Traceback" not in err
    else:
        assert first.returncode == -signal.SIGKILL
    states = _states(db)
    assert states.count("COMPLETE") == 2 and states.count("RUNNING") == (1 if sig == signal.SIGKILL else 0)
    killed = states.index("RUNNING" if sig == signal.SIGKILL else "FAIL")

    second = subprocess.run(_command(tmp_path, 4), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4                                                   # exactly what was asked
    assert trials[killed].state == optuna.trial.TrialState.FAIL                 # the interrupted trial failed ...
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].params == trials[killed].params         # ... and retried once
    assert retry[0].state == optuna.trial.TrialState.COMPLETE

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("autoprune").experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []  # nothing left running
    killed_run = client.get_run(trials[killed].user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["autoprune.state"] == "failed"
    parents = [r for r in runs if r.data.tags.get("autoprune.role") == "search"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
    trial_runs = [r for r in runs if r.data.tags.get("autoprune.role") == "trial"]
    assert sorted(r.info.status for r in trial_runs).count("FINISHED") == 4

    third = subprocess.run(_command(tmp_path, 4), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0 and "budget of 4 trials is spent" in third.stdout + third.stderr
    assert len(optuna.load_study(study_name="resume", storage=f"sqlite:///{db}").get_trials()) == len(trials)


def test_two_workers_on_one_sqlite_study_share_its_budget(tmp_path):
    """Same command in two processes on one SQLite file: exactly n_trials trials in all, none failed,
    every trial's MLflow run finished."""
    warm = subprocess.run(_command(tmp_path, 0), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert warm.returncode == 0, warm.stderr[-3000:]  # trains and caches the baseline once
    workers = [subprocess.Popen(_command(tmp_path, 6), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=400) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 6
    owners = {t.user_attrs["owner"] for t in study.get_trials()}
    assert len(owners) == 2  # both workers ran trials
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trial_runs = client.search_runs([client.get_experiment_by_name("autoprune").experiment_id],
                                    filter_string="tags.`autoprune.role` = 'trial'", max_results=1000)
    assert sorted(int(r.data.tags["autoprune.trial_number"]) for r in trial_runs) == list(range(6))
    assert {r.info.status for r in trial_runs} == {"FINISHED"}


def test_silent_trial_of_another_host_is_failed_by_its_heartbeat_and_retried(make_cfg, tmp_path):
    """A trial owned by a process on another machine cannot be checked for life: it is failed once its
    heartbeat is silent for 4 beats, its MLflow run closed, its plan retried."""
    from autoprune.cli import run

    cfg = make_cfg("search.study_name=hb", "search.heartbeat_s=1", "search.n_trials=2", "search.warm_start=[]")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=4)
    study = optuna.create_study(storage=storage, study_name="hb", directions=["maximize", "minimize"])
    lost = study.ask({"stem.0": optuna.distributions.FloatDistribution(0.0, 0.85, step=0.05)})
    lost.set_user_attr("owner", "another-host:4242:1")
    storage.record_heartbeat(lost._trial_id)
    time.sleep(5)  # > 4 heartbeats of silence
    outcome = run(cfg, tmp_path / "out")
    trials = optuna.load_study(study_name="hb", storage=storage).get_trials()
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert len(outcome.report.trials) == 2  # the lost trial does not count against the budget
