"""Which database errors count as an outage (503) rather than a bug (500)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from chat_service.store.database import is_conflict, is_outage
from chat_service.store.engine import create_engine


def dbapi_error(orig: Exception) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.CrashShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.ReadOnlySQLTransactionError(
            "cannot execute INSERT in a read-only transaction"
        ),
    ],
)
def test_server_unavailable_states_are_outage(orig: Exception) -> None:
    error = dbapi_error(orig)

    assert is_outage(error)
    assert not is_conflict(error)


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedTableError("relation does not exist"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        ValueError("not a database error"),
    ],
)
def test_other_errors_are_not_outage(orig: Exception) -> None:
    assert not is_outage(dbapi_error(orig))


def test_deadlock_is_conflict() -> None:
    error = dbapi_error(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))

    assert is_conflict(error)


def test_engine_hides_parameters_in_errors(tmp_path: Path) -> None:
    for url in (
        f"sqlite+aiosqlite:///{tmp_path / 'hidden.db'}",
        "postgresql+asyncpg://user@127.0.0.1:1/none",
    ):
        engine = create_engine(url)
        assert engine.sync_engine.hide_parameters
