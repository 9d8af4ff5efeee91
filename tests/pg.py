"""The real PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres) for tests: fresh databases, and the
server-side view of their connections (who waits on a lock, terminating backends)."""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import pytest
import sqlalchemy

PG = "postgresql://postgres@127.0.0.1:5432"


def admin() -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(f"{PG}/test", isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


def available() -> bool:
    try:
        with admin().connect():
            return True
    except Exception:
        return False


def fresh_database(prefix: str) -> Iterator[str]:
    """Yields the URL of a new, empty database; drops it afterwards (closing its connections)."""
    if not available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"autoprune_{prefix}_{uuid.uuid4().hex[:8]}"
    with admin().connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield f"{PG}/{name}"
    with admin().connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def terminate_backends(url: str) -> int:
    """`pg_terminate_backend` every connection to `url`'s database but this one; how many there were."""
    with admin().connect() as conn:
        return len(conn.execute(sqlalchemy.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
            {"db": sqlalchemy.engine.make_url(url).database}).all())


def lock_waiters(url: str) -> list[int]:
    """The backends of `url`'s database that wait for a lock held by another."""
    with admin().connect() as conn:
        return [row[0] for row in conn.execute(sqlalchemy.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"),
            {"db": sqlalchemy.engine.make_url(url).database})]


def wait_for(condition, what: str, timeout_s: float = 300, alive=None):
    """Poll `condition()` until it returns something truthy (an event, not a time margin: `timeout_s`
    only ends a hung test). `alive()`, if given, must stay true meanwhile (e.g. the process under test runs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def terminate(pid: int) -> None:
    with admin().connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
