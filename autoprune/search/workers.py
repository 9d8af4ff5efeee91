"""Many workers on one study: a shared trial budget, heartbeats, and retry of trials whose worker died.

`search.n_trials` is a budget, not an increment: the study (or, with `search.run_name`, the run
group inside it) runs exactly that many trials, so the same command run again after a crash
finishes the search instead of adding to it. Trials are claimed under a study-wide lock (a
PostgreSQL advisory lock, or a file lock beside a SQLite database), so any number of workers on
one storage run exactly that many, none twice. Workers with the same `search.run_name` also share
one MLflow parent run.

A dead worker's trial is found two ways: each running trial records its owner process
(`host/ns:pid:start`), so a worker on the same host fails the trials of a dead process at once;
across hosts, a running trial records a heartbeat and goes stale after `4 × search.heartbeat_s`.
Either way the trial is marked failed, its MLflow run KILLED, and it is retried up to
`search.max_retry` times; a trial failed that way does not count against the budget.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, cast

import filelock
import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from autoprune.errors import ConfigError, first_line
from autoprune.owner import owner_is_dead, process_owner
from autoprune.search.study import connection_lost, reconnecting

log = logging.getLogger("autoprune")

GROUP_ATTR = "run_group"
OWNER_ATTR = "owner"          # user attr of a running trial: its process, host/ns:pid:start
INTERRUPTED_ATTR = "interrupted"


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Exclusive lock across processes (and machines, for PostgreSQL) for one study."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = Path(parsed.database or "optuna.db").expanduser().resolve()
        with filelock.FileLock(f"{path}.{study_name}.lock"):
            yield
        return
    if backend == "postgresql":
        with _advisory_lock(url, study_name):
            yield
        return
    raise ConfigError(f"several workers need a SQLite or PostgreSQL search.storage, not {backend}")


@contextlib.contextmanager
def _advisory_lock(url: str, study_name: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock; taken again on a new connection if the connection
    drops while waiting. A connection lost while the lock is held releases the lock with it."""
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def connect_and_lock() -> sqlalchemy.Connection:
        conn = engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            conn.close()
            raise
        return conn

    try:
        conn = reconnecting(connect_and_lock, "search.storage (study lock)")()
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except sqlalchemy.exc.DBAPIError as exc:
                if not connection_lost(exc):
                    raise
                log.warning("the study lock's connection was lost (%s); the server released the lock",
                            first_line(exc))
            finally:
                conn.close()
    finally:
        engine.dispose()


def supports_lock(url: str) -> bool:
    return make_url(url).get_backend_name() in ("sqlite", "postgresql")


def shared_lock(url: str, study_name: str, group: Optional[str]) -> contextlib.AbstractContextManager:
    """The study lock wherever workers may share the study (a lockable storage, or a run group, which
    then needs one); no lock on in-memory storages, which one process owns."""
    return study_lock(url, study_name) if group or supports_lock(url) else contextlib.nullcontext()


def counts_against_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Running and finished trials count; a trial whose worker died or was interrupted does not
    (its retry does)."""
    state = trial.state
    if state == optuna.trial.TrialState.WAITING:
        return False
    if state == optuna.trial.TrialState.FAIL:
        return "fail_reason" in trial.user_attrs and not trial.user_attrs.get(INTERRUPTED_ATTR)
    return True


def budget_used(study: optuna.Study, group: Optional[str]) -> int:
    """Trials of `group` (None: of the whole study) that count against the budget."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if (group is None or t.user_attrs.get(GROUP_ATTR) == group) and counts_against_budget(t))


def claim(study: optuna.Study, url: str, group: Optional[str], budget: int,
          ask: Callable[[], Optional[optuna.Trial]]) -> Optional[optuna.Trial]:
    """`ask()` for the next trial of `group` (None: the whole study) if its budget allows, recording
    this process as the trial's owner; None when the budget is spent or `ask` has nothing to propose."""
    with shared_lock(url, study.study_name, group):
        if budget_used(study, group) >= budget:
            return None
        trial = ask()
        if trial is None:
            return None
        trial.set_user_attr(OWNER_ATTR, process_owner())
        if group:
            trial.set_user_attr(GROUP_ATTR, group)
        return trial


def fail_orphaned_trials(study: optuna.Study, on_failed: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
                         ) -> list[int]:
    """Fail the running trials whose owner process on this host is gone (a worker killed with
    kill -9, a crashed machine's restarted worker) and pass each to `on_failed` (close its MLflow run,
    enqueue a retry). Returns their numbers."""
    storage, failed = study._storage, []
    for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        if not owner_is_dead(trial.user_attrs.get(OWNER_ATTR)):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        failed.append(trial.number)
        on_failed(study, storage.get_trial(trial._trial_id))
    return failed


class Heartbeat:
    """Records a heartbeat for one running trial every `interval` seconds, in a daemon thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float):
        self.storage, self.interval = storage, interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        if not self.interval or not isinstance(self.storage, optuna.storages.RDBStorage):
            yield
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    cast(optuna.storages.RDBStorage, self.storage).record_heartbeat(trial._trial_id)
                except Exception as exc:  # the storage stayed away through its reconnects: beat again later
                    log.warning("heartbeat of trial %d not recorded (%s)", trial.number, first_line(exc))

        self.storage.record_heartbeat(trial._trial_id)
        self._thread = threading.Thread(target=loop, name="autoprune-heartbeat", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


class StaleTrialHandler:
    """Optuna's failed_trial_callback for stale trials: enqueue a retry with the same parameters and
    keep the trial until the search loop takes it (`take_lost`) to close its records (MLflow run)."""

    def __init__(self, max_retry: int):
        self.max_retry = max_retry
        self._lost: list[optuna.trial.FrozenTrial] = []
        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._lost.append(trial)
        self.retry(study, trial)

    def take_lost(self) -> list[optuna.trial.FrozenTrial]:
        """The stale trials failed since the last call (oldest first)."""
        lost, self._lost = self._lost, []
        return lost

    def retry(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Enqueue `trial`'s parameters again, unless it was already retried `max_retry` times
        (Optuna's RetryHeartbeatStaleTrialCallback: system attrs `failed_trial`, `retry_history`).
        The retry starts clean: the failed trial's user attributes (owner, MLflow run, fail reason)
        and sampler records stay with it."""
        bare = copy.copy(trial)
        bare.user_attrs = {}
        bare.system_attrs = copy.deepcopy({k: v for k, v in trial.system_attrs.items()
                                           if k in ("failed_trial", "retry_history")})
        self._retry(study, bare)
