"""Group commit of the messages that start new chats (PostgreSQL).

Such a message needs no read before its writes: its chat, message, run and
outbox rows, and its count against the user's rate limit, are one statement
that commits by itself. :class:`FirstMessageWriter` sends the messages that
arrive while such a statement is in flight together, as one statement with
one array per column. The group shares the round trip, the statement's
overhead in SQLAlchemy and asyncpg, and PostgreSQL's commit. A message that
arrives when nothing is in flight is written at once, alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Table, TextClause, text
from sqlalchemy.dialects import postgresql

from bulkhead.log import get_logger
from chat_service.store.database import Database
from chat_service.store.tables import (
    chats,
    message_rate_counters,
    messages,
    outbox,
    runs,
)

Row = dict[str, Any]

# Statements in flight at once. With one, every message that arrives while
# it runs joins the next group. Two formed groups of about two messages at
# 600 messages/s on the benchmark machine and cost more CPU per message.
MAX_IN_FLIGHT = 1
# Messages in one statement: bounds the statement's size and how long it
# locks the rate counter rows of its users.
MAX_GROUP = 64

_TABLES = (chats, messages, runs, outbox)
_PREFIXES = {chats: "c", messages: "m", runs: "r", outbox: "o"}
_PG_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
# The position of a message in its group, from unnest ... WITH ORDINALITY.
_POSITION = "position"

# Counts the group's messages per user in the window :q_window_minute and
# keeps, per user, the first ones that fit under :q_limit. The counter is
# not capped, so the count of messages already in the window is the
# returned count minus the group's own. That stays exact when another
# statement counts messages of the same user at the same time, because the
# row lock orders the two. Messages over the limit are counted too, which changes nothing,
# because every message is rejected once the count reaches the limit.
# ORDER BY user_id makes PostgreSQL lock the counters in user order, which
# in practice keeps two groups from deadlocking. PostgreSQL does not promise
# that order, so a deadlock that still happens is retried by PostMessage's
# retry_on_conflict.
_RATE_GATE = f"""
posted AS (
SELECT user_id, {_POSITION}
FROM unnest(CAST(:q_user_id AS VARCHAR[])) WITH ORDINALITY AS p(user_id, {_POSITION})),
per_user AS (SELECT user_id, count(*) AS posted FROM posted GROUP BY user_id),
counted AS (
INSERT INTO {message_rate_counters.name} AS counter (user_id, window_minute, count)
SELECT user_id, :q_window_minute, posted FROM per_user ORDER BY user_id
ON CONFLICT (user_id) DO UPDATE SET
count = CASE WHEN counter.window_minute = excluded.window_minute
THEN counter.count + excluded.count ELSE excluded.count END,
window_minute = excluded.window_minute
RETURNING user_id, count),
admitted AS (
SELECT ranked.{_POSITION} FROM (
SELECT user_id, {_POSITION},
row_number() OVER (PARTITION BY user_id ORDER BY {_POSITION}) AS rank
FROM posted) AS ranked
JOIN per_user USING (user_id)
JOIN counted USING (user_id)
WHERE ranked.rank <= :q_limit - (counted.count - per_user.posted))"""

logger = get_logger(__name__)


@dataclass(frozen=True)
class FirstMessage:
    """Every column of the four rows of a message that starts a chat."""

    user_id: str
    chat: Row
    message: Row
    run: Row
    outbox_row: Row

    def rows(self) -> tuple[Row, Row, Row, Row]:
        return self.chat, self.message, self.run, self.outbox_row


@dataclass(frozen=True)
class RateLimit:
    """Count messages in the one-minute window ``window_minute``, up to ``limit``."""

    window_minute: int
    limit: int


async def insert_first_messages(
    db: Database, group: list[FirstMessage], rate: RateLimit | None
) -> list[bool]:
    """Insert the rows of ``group`` with one statement that commits by itself.

    With ``rate`` a message is inserted only when its user has posted fewer
    than ``rate.limit`` messages in the window, counting the group's earlier
    messages. Returns, per message, whether it was inserted.
    """
    rows = [item.rows() for item in group]
    shape = tuple(tuple(row) for row in rows[0])
    params: dict[str, Any] = {}
    for index, (table, columns) in enumerate(zip(_TABLES, shape, strict=True)):
        prefix = _PREFIXES[table]
        for column in columns:
            params[f"{prefix}_{column}"] = [values[index][column] for values in rows]
    if rate is not None:
        params.update(
            q_user_id=[item.user_id for item in group],
            q_window_minute=rate.window_minute,
            q_limit=rate.limit,
        )
    async with db.single_statement() as conn:
        result = await conn.execute(_group_insert(shape, rate is not None), params)
        if rate is None:
            return [True] * len(group)
        admitted = {row[0] for row in result}
    return [position in admitted for position in range(1, len(group) + 1)]


@cache
def _group_insert(shape: tuple[tuple[str, ...], ...], gated: bool) -> TextClause:
    """Build the statement for groups of rows with the columns in ``shape``.

    Every first message has the same columns, so in practice this builds
    one statement per process and gate setting.
    """
    inserts = [
        _insert_sql(table, columns, gated)
        for table, columns in zip(_TABLES, shape, strict=True)
    ]
    ctes = [_RATE_GATE] if gated else []
    if gated:
        ctes += [f"row_{index} AS ({sql})" for index, sql in enumerate(inserts)]
        final = f"SELECT {_POSITION} FROM admitted"
    else:
        *leading, final = inserts
        ctes += [f"row_{index} AS ({sql})" for index, sql in enumerate(leading)]
    return text(f"WITH {', '.join(ctes)} {final}")


def _insert_sql(table: Table, columns: tuple[str, ...], gated: bool) -> str:
    if _POSITION in columns:
        raise ValueError(f"column name {_POSITION!r} is reserved for the position")
    prefix = _PREFIXES[table]
    names = ", ".join(f'"{column}"' for column in columns)
    # Each array is cast to its column's type, since a bind has no type of
    # its own in PostgreSQL's eyes.
    arrays = ", ".join(
        f"CAST(:{prefix}_{column} AS "
        f"{table.c[column].type.compile(dialect=_PG_DIALECT)}[])"
        for column in columns
    )
    rows = f"unnest({arrays}) WITH ORDINALITY AS u({names}, {_POSITION})"
    where = (
        f" WHERE u.{_POSITION} IN (SELECT {_POSITION} FROM admitted)" if gated else ""
    )
    return f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {rows}{where}"


class FirstMessageWriter:
    """Writes first messages in groups; see the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[
            tuple[FirstMessage, RateLimit | None, asyncio.Future[bool]]
        ] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, item: FirstMessage, rate: RateLimit | None) -> bool:
        """Insert ``item``'s rows; return False when the rate limit rejected it.

        ``rate`` is None when the limit is off. Raises what the statement
        raised, for every message of its group. A cancelled caller's message
        stays in its group, and may be stored.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((item, rate, future))
        if self._in_flight < MAX_IN_FLIGHT:
            self._in_flight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._write_group(self._take_group())
        finally:
            self._in_flight -= 1

    def _take_group(
        self,
    ) -> list[tuple[FirstMessage, RateLimit | None, asyncio.Future[bool]]]:
        """Take the oldest queued messages that can share a statement."""
        rate = self._queue[0][1]
        group = []
        rest = []
        for entry in self._queue:
            if len(group) < MAX_GROUP and entry[1] == rate:
                group.append(entry)
            else:
                rest.append(entry)
        self._queue = rest
        return group

    async def _write_group(
        self, group: list[tuple[FirstMessage, RateLimit | None, asyncio.Future[bool]]]
    ) -> None:
        rate = group[0][1]
        try:
            admitted = await insert_first_messages(
                self._db, [item for item, _, _ in group], rate
            )
        except Exception as error:  # noqa: BLE001 - passed to every caller
            logger.warning(
                "first messages not written",
                messages=len(group),
                error=str(error) or type(error).__name__,
            )
            for _, _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, _, future), inserted in zip(group, admitted, strict=True):
            if not future.done():
                future.set_result(inserted)
