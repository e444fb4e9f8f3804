"""Engine creation for PostgreSQL (asyncpg) and SQLite (aiosqlite).

SQLite gets WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` for every
transaction: a deferred transaction that reads and then writes fails with
"database is locked" without ever calling the busy handler, so write
transactions must take the write lock when they start.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 10_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str, pool_size: int = 10, connect_timeout_s: float = 3.0
) -> AsyncEngine:
    """Create an async engine configured for the URL's dialect."""
    if is_sqlite(url):
        return _create_sqlite_engine(url)
    connect_args: dict[str, Any] = {
        "timeout": connect_timeout_s,
        "command_timeout": 30,
        "server_settings": {"application_name": "bulkhead-chat-service"},
    }
    return create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: under steady load above pool_size, SQLAlchemy closes
        # an overflow connection whenever it returns to a full pool and
        # opens another moments later, each a new PostgreSQL backend. With
        # 64 concurrent PostMessage calls on a pool of 20, overflow cost
        # about 0.8 ms of CPU per message and no overflow about 0.7 ms.
        max_overflow=0,
        # Waiting for a free connection under load is not an outage: allow
        # longer than a connect, but less than the gateway's 5 s deadline.
        pool_timeout=max(connect_timeout_s, 4.0),
        # No pre-ping: it costs a round trip per transaction. A connection
        # that fails with a disconnect error makes SQLAlchemy invalidate the
        # whole pool, so one request sees a database restart, not every one.
        pool_pre_ping=False,
        pool_recycle=1800,
        # Error messages, which reach the logs, leave out the bound values:
        # message text and key hashes.
        hide_parameters=True,
        connect_args=connect_args,
    )


class RollbackOnClose(sqlite3.Connection):
    """A connection that rolls back its open transaction when it closes.

    A task cancelled in the middle of a statement makes SQLAlchemy close the
    connection. Closing a connection whose statements are still referenced
    (the cancelled coroutine's frames hold its cursors) leaves SQLite with a
    half-closed connection that keeps its transaction, and with it the write
    lock of ``BEGIN IMMEDIATE``, until those cursors are freed. Every other
    writer, other processes included, then fails with "database is locked".
    Rolling back first releases the lock whatever happens to the cursors.
    """

    def close(self) -> None:
        try:
            if self.in_transaction:
                self.rollback()
        finally:
            super().close()


def _create_sqlite_engine(url: str) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # One connection: SQLite has one writer at a time anyway, and a pool of
    # connections competing for the write lock is slower and fails under load.
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
        hide_parameters=True,
        connect_args={
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "factory": RollbackOnClose,
        },
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
