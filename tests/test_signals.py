"""Ctrl-C and SIGTERM, sent to a real `python -m autoprune` at the worst moments: a second SIGINT while
the first one's cleanup runs, and a SIGTERM at a trial's boundary (in claim, or while its MLflow run
starts). Each time the process itself must leave nothing RUNNING: the trial failed and retried, its
MLflow run KILLED, exit status 130.

The process is held at those moments by real locks that the test takes on its stores (a PostgreSQL
table lock, an exclusive SQLite lock on the MLflow database) and found there through what it writes
(Optuna rows, PostgreSQL's lock waits): events, not time margins."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

import pg
from conftest import FAST

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One baseline cache for the module: the first search trains it, the others load it."""
    return tmp_path_factory.mktemp("baseline-cache")


def _start(tmp_path: Path, cache: Path, storage: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "autoprune", *FAST, "search.n_trials=2", "search.study_name=signals",
               f"search.storage={storage}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"cache_dir={cache}",
               *extra]
    return subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _alive(proc: subprocess.Popen):
    def check():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
    return check


@contextlib.contextmanager
def _mlflow_locked(tmp_path: Path):
    """An exclusive SQLite lock on the MLflow database: the search's MLflow writes wait until it ends."""
    conn = sqlite3.connect(tmp_path / "mlflow.db", timeout=120, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.close()  # rolls back: the lock is released


def _sql(storage: str, query: str, **params) -> list[tuple]:
    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(query), params)]
    except sqlalchemy.exc.OperationalError:  # SQLite: tables not created yet, or busy for a moment
        return []
    except sqlalchemy.exc.ProgrammingError:  # PostgreSQL: tables not created yet
        return []
    finally:
        engine.dispose()


def _running_trial_attr(storage: str, key: str) -> list[tuple]:
    """(number, value) of RUNNING trials that carry user attribute `key`."""
    return _sql(storage, "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
                         "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = :key", key=key)


def _trial_attr(storage: str, number: int, key: str) -> list[tuple]:
    return _sql(storage, "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                         "WHERE t.number = :number AND a.key = :key", number=number, key=key)


def _assert_closed_by_the_process(proc: subprocess.Popen, storage: str, tmp_path: Path, number: int) -> None:
    """Exit 130 without traceback; trial `number` FAIL (interrupted) and retried once; its MLflow run
    KILLED; nothing RUNNING in Optuna or MLflow."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    assert "run the same command again to resume" in err and "Traceback" not in out + err
    trials = optuna.load_study(study_name="signals", storage=storage).get_trials()
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]
    interrupted = trials[number]
    assert interrupted.state == optuna.trial.TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted" and interrupted.user_attrs["interrupted"]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.WAITING
    assert retry[0].params == interrupted.params
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("autoprune").experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    run = client.get_run(interrupted.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["autoprune.state"] == "failed"


def test_second_sigint_waits_for_the_cleanup_of_the_first(tmp_path, cache):
    """SIGINT mid-trial; a second SIGINT while the first one's cleanup is under way (the trial's fail
    reason is recorded, its MLflow run not yet closed: the test holds the MLflow database)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = _start(tmp_path, cache, storage, "recover.epochs=2000")  # outlasts the test: the signal lands mid-trial
    try:
        # mid-trial: its MLflow run has its params, so the process is in the trial's evaluation
        number, _ = pg.wait_for(lambda: [
            (n, v) for n, v in _running_trial_attr(storage, "mlflow_run_id")
            if _sql(f"sqlite:///{tmp_path / 'mlflow.db'}", "SELECT key FROM params WHERE run_uuid = :r", r=v.strip('"'))
        ], "a trial in its evaluation", alive=_alive(proc))[0]
        with _mlflow_locked(tmp_path):
            proc.send_signal(signal.SIGINT)
            pg.wait_for(lambda: _trial_attr(storage, number, "fail_reason"), "the cleanup of the first SIGINT",
                        alive=_alive(proc))
            proc.send_signal(signal.SIGINT)
        _assert_closed_by_the_process(proc, storage, tmp_path, number)
    finally:
        proc.kill()


@pytest.fixture
def pg_storage():
    """A fresh PostgreSQL database holding an (empty) Optuna schema, so that its tables can be locked."""
    for url in pg.fresh_database("signals"):
        optuna.storages.RDBStorage(url).engine.dispose()
        yield url


@contextlib.contextmanager
def _trial_attrs_locked(storage: str):
    """PostgreSQL: nobody may write a trial's user attributes (reads go on) until the block ends."""
    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("LOCK TABLE trial_user_attributes IN EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def _blocked_in_claim(proc: subprocess.Popen, storage: str) -> int:
    """The number of the trial the search has asked for while it waits to record the trial's owner
    (the first write of a trial's user attributes, inside claim)."""
    running = pg.wait_for(lambda: pg.lock_waiters(storage) and _sql(storage, "SELECT number FROM trials "
                                                                             "WHERE state = 'RUNNING'"),
                          "a search blocked in claim", alive=_alive(proc))
    return running[0][0]


def test_sigterm_inside_claim_leaves_nothing_running(tmp_path, cache, pg_storage):
    proc = _start(tmp_path, cache, pg_storage)
    try:
        with _trial_attrs_locked(pg_storage):
            number = _blocked_in_claim(proc, pg_storage)
            proc.send_signal(signal.SIGTERM)
        _assert_closed_by_the_process(proc, pg_storage, tmp_path, number)
    finally:
        proc.kill()


def test_sigterm_while_the_trial_run_starts_leaves_nothing_running(tmp_path, cache, pg_storage):
    """Between ask and evaluate: the trial is claimed, its plan recorded, its MLflow run being created."""
    proc = _start(tmp_path, cache, pg_storage)
    try:
        with contextlib.ExitStack() as mlflow_lock:
            with _trial_attrs_locked(pg_storage):
                number = _blocked_in_claim(proc, pg_storage)
                mlflow_lock.enter_context(_mlflow_locked(tmp_path))
            # claim goes on; the trial's MLflow run waits for the MLflow database
            pg.wait_for(lambda: _trial_attr(pg_storage, number, "plan"), "the trial's run starting",
                        alive=_alive(proc))
            proc.send_signal(signal.SIGTERM)
        _assert_closed_by_the_process(proc, pg_storage, tmp_path, number)
    finally:
        proc.kill()
