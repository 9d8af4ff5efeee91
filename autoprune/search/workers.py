"""Many workers on one study: a shared trial budget, heartbeats, and retry of trials whose worker died.

Workers started with the same `search.run_name` (same storage, same study) form a *run group*:
they share one MLflow parent run and `search.n_trials` is the group's budget, claimed under a
study-wide lock (a PostgreSQL advisory lock, or a file lock beside a SQLite database) so the group
runs exactly that many trials, none twice. A running trial records a heartbeat; a trial whose
worker was killed goes stale after `4 × search.heartbeat_s`, is marked failed (its MLflow run
KILLED) by the next worker that asks, and is retried up to `search.max_retry` times.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from autoprune.errors import ConfigError

GROUP_ATTR = "run_group"


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Exclusive lock across processes (and machines, for PostgreSQL) for one study."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = Path(parsed.database or "optuna.db").expanduser().resolve()
        with open(f"{path}.{study_name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if backend == "postgresql":
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
        return
    raise ConfigError(f"search.run_name needs a SQLite or PostgreSQL search.storage, not {backend}")


def counts_against_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Running and finished trials count; a trial failed for a lost heartbeat does not (its retry does)."""
    state = trial.state
    if state == optuna.trial.TrialState.WAITING:
        return False
    if state == optuna.trial.TrialState.FAIL:
        return "fail_reason" in trial.user_attrs
    return True


def claim(study: optuna.Study, url: str, group: str, budget: int,
          ask: Callable[[], optuna.Trial]) -> Optional[optuna.Trial]:
    """`ask()` for the next trial of `group` if its budget allows; None when the budget is spent."""
    with study_lock(url, study.study_name):
        used = sum(1 for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get(GROUP_ATTR) == group and counts_against_budget(t))
        if used >= budget:
            return None
        trial = ask()
        trial.set_user_attr(GROUP_ATTR, group)
        return trial


class Heartbeat:
    """Records a heartbeat for one running trial every `interval` seconds, in a daemon thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float):
        self.storage, self.interval = storage, interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        if not isinstance(self.storage, optuna.storages.RDBStorage):
            yield
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.storage.record_heartbeat(trial._trial_id)

        self.storage.record_heartbeat(trial._trial_id)
        self._thread = threading.Thread(target=loop, name="autoprune-heartbeat", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


class StaleTrialHandler:
    """Optuna's failed_trial_callback for stale trials: close the trial's MLflow run (`on_stale`,
    set once the tracker exists) and enqueue a retry with the same parameters."""

    def __init__(self, max_retry: int):
        self.max_retry = max_retry
        self.on_stale: Optional[Callable[[optuna.trial.FrozenTrial], None]] = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.on_stale is not None:
            self.on_stale(trial)
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            return
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history}))
