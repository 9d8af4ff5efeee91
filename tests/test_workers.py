"""Many workers on one study: PostgreSQL at 127.0.0.1:5432 (trust auth), real subprocesses; the study
lock and the retry of a lost trial."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from conftest import FAST

PG = "postgresql://postgres@127.0.0.1:5432"
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def _pg_available() -> bool:
    try:
        engine = sqlalchemy.create_engine(f"{PG}/test", poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            return True
    except Exception:
        return False


@pytest.fixture
def databases():
    """Two fresh PostgreSQL databases (Optuna, MLflow), dropped afterwards."""
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    names = [f"autoprune_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    admin = sqlalchemy.create_engine(f"{PG}/test", isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        for name in names:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield [f"{PG}/{name}" for name in names]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _command(tmp_path, optuna_url, mlflow_url, *extra):
    return [sys.executable, "-m", "autoprune", *FAST, f"search.storage={optuna_url}", f"tracking.uri={mlflow_url}",
            f"cache_dir={tmp_path / 'cache'}", "search.study_name=workers", *extra]


@pytest.mark.slow
def test_four_workers_share_one_budget_and_one_parent_run(tmp_path, databases):
    optuna_url, mlflow_url = databases
    env = ENV
    # train and cache the baseline once, so the workers start together
    warm = subprocess.run(_command(tmp_path, optuna_url, mlflow_url, "search.n_trials=0"), cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert warm.returncode == 0, warm.stderr[-3000:]
    workers = [subprocess.Popen(_command(tmp_path, optuna_url, mlflow_url, "search.run_name=grp", "search.n_trials=10",
                                         "search.warm_start=[]", f"hydra.run.dir={tmp_path / f'w{i}'}"),
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for i in range(4)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]

    study = optuna.load_study(study_name="workers", storage=optuna_url)
    group = [t for t in study.trials if t.user_attrs.get("run_group") == "grp"]
    assert len(group) == 10 and all(t.state == optuna.trial.TrialState.COMPLETE for t in group)
    assert len({t.number for t in group}) == 10
    per_worker = [sum("trial " in line and " (#" in line for line in out.splitlines()) for out, _ in outputs]
    assert sum(per_worker) == 10 and sum(n > 0 for n in per_worker) >= 2, per_worker

    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("autoprune")
    parents = client.search_runs([exp.experiment_id], "tags.`autoprune.run_group` = 'grp'")
    assert len(parents) == 1
    trials = client.search_runs([exp.experiment_id], "tags.`autoprune.role` = 'trial'", max_results=100)
    assert len(trials) == 10 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    assert sorted(int(t.data.tags["autoprune.trial_number"]) for t in trials) == sorted(t.number for t in group)
    assert all(t.data.tags["autoprune.state"] == "complete" for t in trials)


@pytest.mark.slow
def test_stale_trial_of_a_dead_worker_is_failed_closed_and_retried(tmp_path, databases):
    """A worker killed mid-trial leaves a RUNNING trial; the next worker (same host: it sees the owner
    process is gone) fails it, closes its MLflow run and retries it, and the group still ends with its
    full budget. (Across hosts the heartbeat finds it: test_resume.py.)"""
    import signal
    import time

    optuna_url, mlflow_url = databases
    env = ENV
    args = ["search.run_name=crash", "search.n_trials=3", "search.warm_start=[]", "search.heartbeat_s=1",
            "recover.epochs=30"]
    victim = subprocess.Popen(_command(tmp_path, optuna_url, mlflow_url, *args, f"hydra.run.dir={tmp_path / 'v'}"),
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(1)
        try:
            study = optuna.load_study(study_name="workers", storage=optuna_url)
        except KeyError:
            continue
        if any(t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in study.trials):
            break
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(5)  # > 4 heartbeats
    survivor = subprocess.run(_command(tmp_path, optuna_url, mlflow_url, *args[:-1], "recover.epochs=1",
                                       "search.resume=force",   # shorter fine-tunes than the victim's, on purpose
                                       f"hydra.run.dir={tmp_path / 's'}"),
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    study = optuna.load_study(study_name="workers", storage=optuna_url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and "fail_reason" not in killed[0].user_attrs
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params
    run = MlflowClient(mlflow_url).get_run(killed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "worker process gone" in run.data.tags["autoprune.fail_reason"]


HOLD = """
import sys
from autoprune.search.workers import shared_lock
with shared_lock(sys.argv[1], "s", None):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_sqlite_study_lock_excludes_other_processes(tmp_path):
    """Another process holding the study lock (the file lock beside the SQLite database) keeps this one out
    until it lets go."""
    import filelock

    from autoprune.search.workers import shared_lock

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(f"{tmp_path / 'optuna.db'}.s.lock").acquire(timeout=0)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
        with shared_lock(url, "s", None):  # free now
            pass
    finally:
        holder.kill()


def test_retry_starts_clean_and_stops_after_max_retry(tmp_path):
    """A lost trial is enqueued again with its parameters only (Optuna's retry history kept); a retry
    lost again is not retried past search.max_retry."""
    from autoprune.search.workers import StaleTrialHandler

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", directions=["maximize"])
    handler = StaleTrialHandler(max_retry=1)
    lost = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    lost.set_user_attr("owner", "host/1:2:3")
    lost.set_user_attr("mlflow_run_id", "abc")
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    handler.retry(study, study.trials[lost.number])
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == study.trials[lost.number].params
    assert retry.user_attrs == {}
    assert retry.system_attrs == {"failed_trial": lost.number, "retry_history": [lost.number]}
    again = study.ask()
    assert again.number == retry.number and again.params == retry.params
    study.tell(again, state=optuna.trial.TrialState.FAIL)
    handler.retry(study, study.trials[again.number])
    assert len(study.trials) == 2  # max_retry=1: the retry is not retried


def test_a_heartbeat_under_a_second_opens_the_storage(tmp_path):
    """search.heartbeat_s accepts any number >= 0; Optuna's heartbeat interval is whole seconds > 0."""
    from autoprune.search.study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_s=0.5)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 4)
    assert open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_s=30).heartbeat_interval == 30
