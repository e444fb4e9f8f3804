"""Per-user limit on posted messages, counted in the database.

The counter lives in ``message_rate_counters`` so that the limit holds
across gateway and chat_service replicas. Windows are fixed minutes: a user
may post ``limit`` messages between hh:mm:00 and hh:mm:59, so a burst at the
boundary may reach twice the limit within a few seconds. The count is one
upsert inside the PostMessage transaction: a rejected or failed post rolls
its increment back, and on PostgreSQL the row lock orders concurrent posts
of the same user.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_service.errors import RateLimitedError
from chat_service.store.database import utcnow
from chat_service.store.tables import message_rate_counters

WINDOW_S = 60


def window_of(timestamp: float) -> int:
    """Number of the one-minute window that ``timestamp`` (Unix seconds) falls in."""
    return int(timestamp // WINDOW_S)


def limited_error(limit: int, timestamp: float) -> RateLimitedError:
    """Build the error for a message over ``limit``, with the seconds until
    the window of ``timestamp`` ends as metadata ``retry_after_s``."""
    retry_after_s = max(1, math.ceil((window_of(timestamp) + 1) * WINDOW_S - timestamp))
    return RateLimitedError(
        f"Too many messages: at most {limit} per minute.",
        retry_after_s=str(retry_after_s),
    )


async def count_message(
    conn: AsyncConnection, user_id: str, limit: int, now: datetime | None = None
) -> None:
    """Count one message of ``user_id`` in the current window.

    Raises RateLimitedError (see :func:`limited_error`) when the count would
    exceed ``limit``. A ``limit`` of 0 disables the check and writes nothing.
    """
    if limit <= 0:
        return
    timestamp = (now or utcnow()).timestamp()
    table = message_rate_counters
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(
        user_id=user_id, window_minute=window_of(timestamp), count=1
    )
    same_window = table.c.window_minute == statement.excluded.window_minute
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.user_id],
        set_={
            "count": case((same_window, table.c.count + 1), else_=1),
            "window_minute": statement.excluded.window_minute,
        },
    ).returning(table.c.count)
    count = (await conn.execute(statement)).scalar_one()
    if count > limit:
        raise limited_error(limit, timestamp)
