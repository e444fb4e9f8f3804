"""The per-user message counter on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chat_service.errors import RateLimitedError
from chat_service.rate_limits import count_message
from chat_service.store.database import Database
from chat_service.store.tables import message_rate_counters

START = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=2)
    async with database.transaction() as conn:
        await conn.run_sync(
            lambda sync: message_rate_counters.create(sync, checkfirst=True)
        )
        await conn.execute(sa.delete(message_rate_counters))
    yield database
    await database.dispose()


async def _post(db: Database, user: str, limit: int, now: datetime) -> None:
    async with db.transaction() as conn:
        await count_message(conn, user, limit, now)


async def test_counter_limits_each_window(db: Database) -> None:
    for second in range(3):
        await _post(db, "u1", 3, START + timedelta(seconds=second))

    with pytest.raises(RateLimitedError) as limited:
        await _post(db, "u1", 3, START + timedelta(seconds=5))
    assert limited.value.metadata["retry_after_s"] == "45"
    # The rejected post rolled back: still limited, never counted past 3.
    with pytest.raises(RateLimitedError):
        await _post(db, "u1", 3, START + timedelta(seconds=49))
    await _post(db, "u2", 3, START)
    await _post(db, "u1", 3, START + timedelta(seconds=50))  # the next minute

    async with db.transaction() as conn:
        rows = (await conn.execute(sa.select(message_rate_counters))).all()
    assert sorted((r.user_id, r.count) for r in rows) == [("u1", 1), ("u2", 1)]


async def test_counter_zero_limit_writes_nothing(db: Database) -> None:
    for _ in range(10):
        await _post(db, "u3", 0, START)

    async with db.transaction() as conn:
        count = (
            await conn.execute(
                sa.select(sa.func.count()).select_from(message_rate_counters)
            )
        ).scalar_one()
    assert count == 0
