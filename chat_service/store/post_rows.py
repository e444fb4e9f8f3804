"""The rows of an accepted message, written with as few round trips as possible.

PostMessage writes up to four rows: the chat (when it is new), the user
message, the run and the outbox row (when the run is dispatched at once).
On PostgreSQL they go out as one statement, with a data-modifying CTE per
row. Foreign keys are checked at the end of that statement, so a row may
refer to one inserted beside it. SQLite has no data-modifying CTEs
and no network hop, so there each row is one prebuilt INSERT.

Messages that start new chats need no read before their writes, so on
PostgreSQL they take another path: several of them go out as one statement
that also counts them against the rate limit (``store.first_messages``).

Every row is a complete dict of column values: these statements apply no
Python-side column defaults.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import TextClause, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_service.store.tables import (
    chats,
    messages,
    outbox,
    runs,
)

Row = dict[str, Any]

# Bind names are the column names behind a per-table prefix, since columns
# such as id and created_at occur in several tables.
_PREFIXES = {chats: "c", messages: "m", runs: "r", outbox: "o"}
_TABLES = {table.name: table for table in _PREFIXES}


async def insert_post_rows(
    conn: AsyncConnection,
    *,
    chat: Row | None,
    message: Row,
    run: Row,
    outbox_row: Row | None,
) -> None:
    """Insert the rows of one accepted message; ``None`` rows are skipped."""
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
        for table, row in rows:
            await conn.execute(insert(table), row)
        return
    shape = tuple((table.name, tuple(row)) for table, row in rows)
    params = {
        f"{_PREFIXES[table]}_{column}": value
        for table, row in rows
        for column, value in row.items()
    }
    await conn.execute(_combined_insert(shape), params)


@cache
def _combined_insert(shape: tuple[tuple[str, tuple[str, ...]], ...]) -> TextClause:
    """Build one statement that inserts a row into each table of ``shape``.

    ``shape`` lists (table name, column names). There are a handful of
    shapes in use, so the statements are kept for the process.
    """
    inserts = [_insert_sql(name, columns) for name, columns in shape]
    *leading, last = inserts
    if not leading:
        return text(last)
    ctes = [f"row_{index} AS ({sql})" for index, sql in enumerate(leading)]
    return text(f"WITH {', '.join(ctes)} {last}")


def _insert_sql(name: str, columns: tuple[str, ...]) -> str:
    prefix = _PREFIXES[_TABLES[name]]
    binds = ", ".join(f":{prefix}_{column}" for column in columns)
    return f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({binds})"
