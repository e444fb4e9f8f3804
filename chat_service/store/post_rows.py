"""The rows of an accepted message, written with as few round trips as possible.

PostMessage writes up to four rows: the chat (when it is new), the user
message, the run and the outbox row (when the run is dispatched at once).
On PostgreSQL they go out as one statement, with a data-modifying CTE per
row. Foreign keys are checked at the end of that statement, so a row may
refer to one inserted beside it. SQLite has no data-modifying CTEs
and no network hop, so there each row is one prebuilt INSERT.

A message that starts a new chat needs no read before its writes, so on
PostgreSQL its statement can also count the message against the user's
rate limit (:class:`RateGate`) and run on its own, without BEGIN and
COMMIT: one round trip for the whole request.

Every row is a complete dict of column values: these statements apply no
Python-side column defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Table, TextClause, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_service.store.tables import (
    chats,
    message_rate_counters,
    messages,
    outbox,
    runs,
)

Row = dict[str, Any]

# Bind names are the column names behind a per-table prefix, since columns
# such as id and created_at occur in several tables.
_PREFIXES = {chats: "c", messages: "m", runs: "r", outbox: "o"}
_TABLES = {table.name: table for table in _PREFIXES}
_PG_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]

# Counts the message in the user's window, as rate_limits.count_message does.
# A message over the limit is not counted: the gate then returns no row, so
# the inserts that select from it insert nothing.
_RATE_GATE = f"""rate AS (
INSERT INTO {message_rate_counters.name} AS counter (user_id, window_minute, count)
VALUES (:q_user_id, :q_window_minute, 1)
ON CONFLICT (user_id) DO UPDATE SET
count = CASE WHEN counter.window_minute = excluded.window_minute
THEN counter.count + 1 ELSE 1 END,
window_minute = excluded.window_minute
WHERE counter.window_minute <> excluded.window_minute OR counter.count < :q_limit
RETURNING 1)"""


@dataclass(frozen=True)
class RateGate:
    """Count a message in ``user_id``'s window ``window_minute``, up to ``limit``."""

    user_id: str
    window_minute: int
    limit: int


async def insert_post_rows(
    conn: AsyncConnection,
    *,
    chat: Row | None,
    message: Row,
    run: Row,
    outbox_row: Row | None,
    rate: RateGate | None = None,
) -> bool:
    """Insert the rows of one accepted message; ``None`` rows are skipped.

    With ``rate`` (PostgreSQL only) the rows are inserted only if the
    message is within the limit. Returns whether the rows were inserted.
    """
    rows = [
        (table, row)
        for table, row in (
            (chats, chat),
            (messages, message),
            (runs, run),
            (outbox, outbox_row),
        )
        if row is not None
    ]
    if conn.dialect.name != "postgresql":
        if rate is not None:
            raise ValueError("a rate gate needs PostgreSQL")
        for table, row in rows:
            await conn.execute(insert(table), row)
        return True
    shape = tuple((table.name, tuple(row)) for table, row in rows)
    params = {
        f"{_PREFIXES[table]}_{column}": value
        for table, row in rows
        for column, value in row.items()
    }
    if rate is not None:
        params.update(
            q_user_id=rate.user_id,
            q_window_minute=rate.window_minute,
            q_limit=rate.limit,
        )
    result = await conn.execute(_combined_insert(shape, rate is not None), params)
    return result.rowcount == 1


@cache
def _combined_insert(
    shape: tuple[tuple[str, tuple[str, ...]], ...], gated: bool
) -> TextClause:
    """Build one statement that inserts a row into each table of ``shape``.

    ``shape`` lists (table name, column names). With ``gated`` the statement
    starts with the rate gate and every row is selected from it. There are
    a handful of shapes in use, so the statements are kept for the process.
    """
    inserts = [_insert_sql(name, columns, gated) for name, columns in shape]
    *leading, last = inserts
    ctes = [_RATE_GATE] if gated else []
    ctes += [f"row_{index} AS ({sql})" for index, sql in enumerate(leading)]
    if not ctes:
        return text(last)
    return text(f"WITH {', '.join(ctes)} {last}")


def _insert_sql(name: str, columns: tuple[str, ...], gated: bool) -> str:
    prefix = _PREFIXES[_TABLES[name]]
    head = f"INSERT INTO {name} ({', '.join(columns)})"
    if not gated:
        binds = ", ".join(f":{prefix}_{column}" for column in columns)
        return f"{head} VALUES ({binds})"
    # A bind in a select list has no column to take its type from, as it
    # would in VALUES, so each one is cast to its column's type.
    table: Table = _TABLES[name]
    values = ", ".join(
        f"CAST(:{prefix}_{column} AS "
        f"{table.c[column].type.compile(dialect=_PG_DIALECT)})"
        for column in columns
    )
    return f"{head} SELECT {values} FROM rate"
