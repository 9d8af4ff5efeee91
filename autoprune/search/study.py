"""Open (or resume) the Optuna study behind a search; storage is any SQLAlchemy URL.

A dropped database connection (a restarted server, `pg_terminate_backend`, a network blip) does not
stop a search: pooled connections are tested before use (SQLAlchemy's `pool_pre_ping`), and a storage
call that loses its connection mid-way is retried with back-off (`RECONNECT`) on a new one. Only when
the database stays away for the whole back-off does the search stop, with one line (`StorageLost`);
finished trials are kept and the same command resumes.
"""

from __future__ import annotations

import functools
import math
import logging
from pathlib import Path
from typing import Any, Callable, Literal, Optional, cast

import optuna
import sqlalchemy
import tenacity
from sqlalchemy.engine import make_url

from autoprune.errors import AutopruneError, ConfigError, few, first_line

log = logging.getLogger("autoprune")

# Back-off between reconnects: 0.5, 1, 2, 4, 8, 8, 8 s (about 30 s in all) before a search gives up.
RECONNECT: dict[str, Any] = dict(wait=tenacity.wait_exponential(multiplier=0.5, max=8), stop=tenacity.stop_after_attempt(8))


class StorageLost(AutopruneError):
    """search.storage stayed unreachable through every reconnect."""


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors behind it (each one's cause, else its context), outermost first."""
    chain: list[BaseException] = []
    error: Optional[BaseException] = exc
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def connection_lost(exc: BaseException) -> bool:
    """A database connection dropped or refused (worth a reconnect), as opposed to a bad query or data.
    Optuna wraps SQLAlchemy's error (StorageInternalError), or first tries another query on the dead
    connection (PendingRollbackError): the whole chain is searched. SQLite has no connection to lose:
    its errors are never retried here."""
    return any(isinstance(error, sqlalchemy.exc.DBAPIError) and (
        error.connection_invalidated or (isinstance(error, sqlalchemy.exc.OperationalError)
                                         and "sqlite" not in type(error.orig).__module__))
        for error in _chain(exc))


def _root(exc: BaseException) -> str:
    """What the database said: the first line of the innermost error behind `exc`."""
    return first_line(_chain(exc)[-1])


def reconnecting(call: Callable, what: str) -> Callable:
    """`call`, retried with back-off (`RECONNECT`) while its database connection is lost."""
    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None  # tenacity sets both before a sleep
        log.warning("lost the connection to %s (%s); reconnecting in %.1f s", what,
                    _root(cast(BaseException, state.outcome.exception())), state.next_action.sleep)

    @functools.wraps(call)
    def retried(*args, **kwargs):
        try:
            for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception(connection_lost),
                                             before_sleep=before_sleep, **RECONNECT):
                with attempt:
                    return call(*args, **kwargs)
        except tenacity.RetryError as exc:
            last = cast(BaseException, exc.last_attempt.exception())  # retries exhausted: it failed
            raise StorageLost(f"lost the connection to {what} and could not reconnect "
                              f"({_root(last)}): finished trials are kept; start the "
                              "database server and run the same command again to resume") from last
    return retried


class ReconnectingStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls survive a dropped connection (module docstring)."""

    def __init__(self, url: str, **kwargs):
        super().__init__(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)


_STORAGE_CALLS = (  # every RDBStorage method that talks to the database
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
    "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "record_heartbeat", "_get_stale_trial_ids",
    "_get_trials")
for _name in _STORAGE_CALLS:
    setattr(ReconnectingStorage, _name, reconnecting(getattr(optuna.storages.RDBStorage, _name), "search.storage"))


def _check_storage(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"search.storage '{url}' is not a SQLAlchemy URL: use e.g. sqlite:///autoprune.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return url


def open_storage(url: str, heartbeat_s: Optional[float] = None,
                 on_stale: Optional[Callable] = None) -> optuna.storages.BaseStorage:
    """Connect to the Optuna storage (creating its tables); fails fast with a one-line reason.
    With `heartbeat_s`, running trials silent for 4 heartbeats are failed and passed to `on_stale`."""
    url = _check_storage(url)
    interval = max(1, math.ceil(heartbeat_s or 0))  # Optuna takes whole seconds > 0 (search.heartbeat_s=0.5: 1)
    heartbeat = dict(heartbeat_interval=interval, grace_period=4 * interval,
                     heartbeat_stale_trial_callback=on_stale) if heartbeat_s else {}
    try:
        return ReconnectingStorage(url, **heartbeat)
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(f"cannot open search.storage '{url}': {first} (start the database server or fix "
                          "search.storage, e.g. search.storage=sqlite:///autoprune.db)") from None


def open_study(storage: optuna.storages.BaseStorage, study_name: str, sampler: optuna.samplers.BaseSampler,
               directions: list[Literal["minimize", "maximize"]]) -> optuna.Study:
    """Create the study, or load it when it exists (this is what makes a re-run resume)."""
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study '{study_name}' has other objectives: set search.study_name to a new name")
    return study


def find_study(storage: optuna.storages.BaseStorage, url: str, study_name: str | None) -> optuna.Study:
    """The study named `study_name`, or the only study in the storage when no name is given."""
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"{len(names)} studies in {url} ({few(names)}): choose one with search.study_name=<name>"
                              if names else f"no study in {url}: run a search first or fix search.storage")
        study_name = names[0]
    elif study_name not in names:
        raise ConfigError(f"no study '{study_name}' in {url}: set search.study_name to one of {few(names)}"
                          if names else f"no study '{study_name}' in {url}: run a search first or fix search.storage")
    return optuna.load_study(study_name=study_name, storage=storage)
