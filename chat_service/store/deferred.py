"""Writes whose results a transaction does not read, sent together.

A run transition ends with several writes: its events, the run's new
columns, the message text, an outbox row. On PostgreSQL each was a round
trip of its own. :func:`defer_insert` and :func:`defer_update` queue such
writes on the connection, and the queued writes go out as one statement, as
data-modifying CTEs, right before the connection's next statement (a hook
on the engine) or before the transaction commits (``Database.transaction``).
So every read still finds every write made before it.

The CTEs of one statement see the same snapshot and none sees the changes
of another. So a deferred UPDATE first sends the writes already queued on
its table: it must see the rows they insert, and PostgreSQL applies only
one of two updates of the same row in one statement.

The statement is plain SQL from templates kept per table and column set,
sent with ``exec_driver_sql``. Composing SQLAlchemy statements instead cost
more CPU in SQLAlchemy's compile cache than the round trips saved.
SQLite has no data-modifying CTEs and no network round trip, so there a
deferred write runs at once, as a SQLAlchemy statement.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Table, event, insert, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat_service.store.tables import metadata

# The queue of each connection. It is kept here, not in the connection's
# info dictionary, because reading that dictionary raises once an outage has
# invalidated the connection, which would hide the outage's own error.
_QUEUES: WeakKeyDictionary[Connection, list[_Write]] = WeakKeyDictionary()
_PG_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Write:
    """One queued write: SQL with a ``{}`` field per parameter, and the values."""

    table: str
    is_update: bool
    template: str
    params: tuple[Any, ...]


def install_deferred_writes(engine: AsyncEngine) -> None:
    """Make every statement on ``engine`` send the writes deferred before it."""
    event.listen(engine.sync_engine, "before_execute", _send_before_execute)


async def defer_insert(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]
) -> None:
    """Queue an insert of ``rows``, which all have the same columns, into ``table``."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        await conn.execute(insert(table), rows)
        return
    columns = tuple(rows[0])
    if len(rows) == 1:
        template = _insert_template(table.name, columns)
        params = tuple(rows[0][column] for column in columns)
    else:
        template = _insert_arrays_template(table.name, columns)
        params = tuple([row[column] for row in rows] for column in columns)
    await _queue(conn, _Write(table.name, False, template, params))


async def defer_update(
    conn: AsyncConnection,
    table: Table,
    key: tuple[str, Any],
    values: Mapping[str, Any],
    append: Collection[str] = (),
) -> None:
    """Queue an update of the row whose column ``key[0]`` equals ``key[1]``.

    Columns named in ``append`` get their value appended (text), the others
    are set to it.
    """
    column, value = key
    if conn.dialect.name != "postgresql":
        assignments = {
            name: table.c[name] + new if name in append else new
            for name, new in values.items()
        }
        await conn.execute(
            update(table).where(table.c[column] == value).values(assignments)
        )
        return
    names = tuple(values)
    template = _update_template(
        table.name, names, tuple(name in append for name in names), column
    )
    params = (*values.values(), value)
    await _queue(conn, _Write(table.name, True, template, params))


async def flush_deferred(conn: AsyncConnection) -> None:
    """Send the writes queued on ``conn`` now, as one statement."""
    combined = _take_combined(conn.sync_connection)
    if combined is not None:
        await conn.exec_driver_sql(*combined)


def discard_deferred(conn: AsyncConnection) -> None:
    """Drop the writes queued on ``conn``, when its transaction rolls back."""
    if conn.sync_connection is not None:
        _QUEUES.pop(conn.sync_connection, None)


async def _queue(conn: AsyncConnection, write: _Write) -> None:
    if conn.sync_connection is None:
        raise RuntimeError("deferred write on a connection that is not open")
    queue = _QUEUES.setdefault(conn.sync_connection, [])
    if write.is_update and any(queued.table == write.table for queued in queue):
        await flush_deferred(conn)
        queue = _QUEUES.setdefault(conn.sync_connection, [])
    queue.append(write)


def _send_before_execute(conn: Connection, *_args: Any) -> None:
    combined = _take_combined(conn)
    if combined is not None:
        # Runs in the same greenlet, before the statement that triggered
        # this hook, and with an empty queue, so it does not recurse.
        conn.exec_driver_sql(*combined)


def _take_combined(conn: Connection | None) -> tuple[str, tuple[Any, ...]] | None:
    """Empty the queue; return its writes as one statement and its parameters."""
    queue = _QUEUES.pop(conn, None) if conn is not None else None
    if not queue:
        return None
    parts: list[str] = []
    params: list[Any] = []
    for write in queue:
        first = len(params) + 1
        numbers = range(first, first + len(write.params))
        parts.append(write.template.format(*(f"${number}" for number in numbers)))
        params.extend(write.params)
    *leading, last = parts
    if not leading:
        return last, tuple(params)
    ctes = ", ".join(
        f"deferred_{index} AS ({sql})" for index, sql in enumerate(leading)
    )
    return f"WITH {ctes} {last}", tuple(params)


def _sql_type(table: str, column: str) -> str:
    return str(metadata.tables[table].c[column].type.compile(dialect=_PG_DIALECT))


@cache
def _insert_template(table: str, columns: tuple[str, ...]) -> str:
    # PostgreSQL takes each parameter's type from its column in VALUES.
    fields = ", ".join("{}" for _ in columns)
    return f"INSERT INTO {table} ({_names(columns)}) VALUES ({fields})"


@cache
def _insert_arrays_template(table: str, columns: tuple[str, ...]) -> str:
    arrays = ", ".join(f"{{}}::{_sql_type(table, column)}[]" for column in columns)
    return f"INSERT INTO {table} ({_names(columns)}) SELECT * FROM unnest({arrays})"


@cache
def _update_template(
    table: str, columns: tuple[str, ...], appended: tuple[bool, ...], key: str
) -> str:
    # A text parameter appended with || has no type of its own, so it is cast.
    assignments = ", ".join(
        f'"{column}" = "{column}" || {{}}::text' if append else f'"{column}" = {{}}'
        for column, append in zip(columns, appended, strict=True)
    )
    return f'UPDATE {table} SET {assignments} WHERE "{key}" = {{}}'


def _names(columns: tuple[str, ...]) -> str:
    return ", ".join(f'"{column}"' for column in columns)
