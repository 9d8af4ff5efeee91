"""search.storage on a real PostgreSQL that drops the search's connections (`pg_terminate_backend`):
storage calls reconnect and retry, the study lock survives, and a whole search finishes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy

import pg
from autoprune.search.study import open_storage
from autoprune.search.workers import study_lock
from conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


@pytest.fixture
def db():
    yield from pg.fresh_database("reconnect")


def _terminated_mid_call(url: str, table: str, call):
    """Run `call()` in a thread while this test holds an exclusive lock on `table`; once the call's
    connection waits on that lock, terminate that connection, then release the lock. Returns what the
    call returned (or raises what it raised)."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    holder = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with holder.connect() as conn:
        conn.execute(sqlalchemy.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        thread = threading.Thread(target=target)
        thread.start()
        waiting = pg.wait_for(lambda: pg.lock_waiters(url), "the storage call waiting on the lock", timeout_s=60)
        pg.terminate(waiting[0])  # its connection dies in the middle of the call
        conn.rollback()
    thread.join(120)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_read_that_loses_its_connection_reconnects(db, caplog):
    study = optuna.create_study(storage=open_storage(db), study_name="s", directions=["maximize"])
    study.enqueue_trial({"x": 0.5})
    trials = _terminated_mid_call(db, "trials", lambda: study.get_trials())
    assert [t.state for t in trials] == [optuna.trial.TrialState.WAITING]
    assert "lost the connection to search.storage" in caplog.text


def test_a_write_that_loses_its_connection_is_made_once(db):
    study = optuna.create_study(storage=open_storage(db), study_name="s", directions=["maximize"])
    trial = _terminated_mid_call(db, "trials", lambda: study.ask())
    study.tell(trial, 1.0)
    assert [(t.number, t.state) for t in study.get_trials()] == [(0, optuna.trial.TrialState.COMPLETE)]


def test_study_lock_whose_connection_is_lost_is_released_by_the_server(db, caplog):
    with study_lock(db, "s"):
        assert pg.terminate_backends(db) == 1  # the lock's own connection
    assert "the server released the lock" in caplog.text
    with study_lock(db, "s"):  # free again (a lock still held would block here forever)
        pass


def _running_with_run(db: str) -> list[int]:
    """Numbers of the search's RUNNING trials that have started their MLflow run (i.e. mid-trial)."""
    engine = sqlalchemy.create_engine(db, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sqlalchemy.text(
                "SELECT t.number FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'"))]
    except sqlalchemy.exc.ProgrammingError:  # tables not created yet
        return []
    finally:
        engine.dispose()


@pytest.mark.slow
def test_search_finishes_when_its_database_connections_are_terminated(tmp_path, db):
    """Twice mid-trial, every connection the search holds to its Optuna database is terminated (the
    heartbeat thread's included): the search reconnects, every trial completes, exit 0, no traceback."""
    command = [sys.executable, "-m", "autoprune", *FAST, "search.n_trials=3", "search.heartbeat_s=1",
               "search.study_name=reconnect", f"search.storage={db}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
               f"cache_dir={tmp_path / 'cache'}"]
    search = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def alive():
        assert search.poll() is None, search.communicate()[1][-3000:]

    try:
        done: set[int] = set()
        for _ in range(2):
            running = pg.wait_for(lambda: set(_running_with_run(db)) - done, "a running trial", alive=alive)
            assert pg.terminate_backends(db) >= 1  # the search had connections, and lost them all
            done |= running
        out, err = search.communicate(timeout=600)
    finally:
        search.kill()
    assert search.returncode == 0, err[-3000:]
    assert "Traceback" not in out + err
    study = optuna.load_study(study_name="reconnect", storage=db)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 3
