"""The database handle: engine, transactions and the mapping of outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bulkhead.log import get_logger
from chat_service.errors import DatabaseUnavailableError
from chat_service.store.deferred import (
    discard_deferred,
    flush_deferred,
    install_deferred_writes,
)
from chat_service.store.engine import create_engine, is_sqlite

# Errors that mean "the database cannot be reached or answered", as opposed
# to a bug or a constraint violation.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


# SQLSTATEs of a PostgreSQL server that is unreachable, shutting down or
# starting up (57P03, "the database system is starting up"), out of
# connections (53300), or a standby that rejects writes (25006) during a
# failover. SQLAlchemy reports some of them as a plain DBAPIError.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08"})
_OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "25006"})

# PostgreSQL aborts one transaction of a deadlock (40P01) or of a
# serialization conflict (40001); running it again is the documented remedy.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_ATTEMPTS = 3

T = TypeVar("T")
logger = get_logger(__name__)


def _sqlstate(error: sa_exc.DBAPIError) -> str | None:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_conflict(error: BaseException) -> bool:
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    return _sqlstate(error) in _CONFLICT_SQLSTATES


async def retry_on_conflict(operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation`` (which opens its own transaction) again when
    PostgreSQL aborted it as a deadlock or serialization victim."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return await operation()
        except sa_exc.DBAPIError as error:
            if not is_conflict(error) or attempt == CONFLICT_ATTEMPTS:
                raise
            logger.warning(
                "transaction aborted by a lock conflict, retrying",
                attempt=attempt,
                error=str(error.orig),
            )
    raise AssertionError("unreachable")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to naive datetimes, which is how SQLite returns them."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def is_outage(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        code = _sqlstate(error) or ""
        if code in _OUTAGE_SQLSTATES or code[:2] in _OUTAGE_SQLSTATE_CLASSES:
            return True
    return isinstance(error, _OUTAGE_ERRORS)


class Database:
    """Owns the engine. Every write goes through :meth:`transaction`, or
    :meth:`single_statement` for a write that is one statement."""

    def __init__(self, url: str, pool_size: int = 10, connect_timeout_s: float = 3.0):
        self.url = url
        self.is_sqlite = is_sqlite(url)
        self.engine: AsyncEngine = create_engine(url, pool_size, connect_timeout_s)
        install_deferred_writes(self.engine)
        # Same pool; asyncpg then sends no BEGIN or COMMIT of its own.
        self._autocommit_engine = self.engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Open a transaction; outages surface as DatabaseUnavailableError.

        Writes deferred in it (``store.deferred``) are sent before it commits.
        """
        with _outages_mapped():
            async with self.engine.begin() as connection:
                try:
                    yield connection
                    await flush_deferred(connection)
                finally:
                    discard_deferred(connection)

    @asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncConnection]:
        """Open a connection in autocommit mode, where each statement runs in
        a transaction of its own. That saves the BEGIN and COMMIT round trips
        of a write that is one statement, or of reads that need no common
        snapshot. Never run two statements that must commit together on it.
        On SQLite, which has no round trips to save, this is :meth:`transaction`."""
        if self.is_sqlite:
            # In autocommit mode SQLAlchemy sends no COMMIT, but the engine's
            # hook still sends BEGIN IMMEDIATE, so a write would be rolled
            # back when the connection returns to the pool.
            async with self.transaction() as connection:
                yield connection
            return
        with _outages_mapped():
            async with self._autocommit_engine.connect() as connection:
                try:
                    yield connection
                    await flush_deferred(connection)
                finally:
                    discard_deferred(connection)

    async def ping(self) -> None:
        async with self.transaction() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


@contextmanager
def _outages_mapped() -> Iterator[None]:
    """Raise DatabaseUnavailableError for an outage, other errors as they are."""
    try:
        yield
    except DatabaseUnavailableError:
        raise
    except Exception as error:
        if is_outage(error):
            raise DatabaseUnavailableError("database unavailable") from error
        raise
