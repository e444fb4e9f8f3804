"""PostMessage's one-statement path on PostgreSQL: a message that starts a
chat, without an idempotency key, is stored and counted against the rate
limit by a single statement that commits by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import sqlalchemy as sa

from bulkhead.messaging import Subjects, Topology
from bulkhead.models import load_catalog
from bulkhead.proto.chat.v1 import chat_service_pb2, types_pb2
from chat_service.errors import RateLimitedError
from chat_service.migrate import upgrade
from chat_service.posting import PostLimits, post_message
from chat_service.store.database import Database
from chat_service.store.tables import (
    chats,
    message_rate_counters,
    messages,
    outbox,
    runs,
)
from tests.conftest import REPO_ROOT

LIMIT = 3
TOPOLOGY = Topology(stream="FIRST_MESSAGE", subjects=Subjects("first"))
CATALOG = load_catalog(str(REPO_ROOT / "config" / "models.toml"))


@pytest.fixture
async def db(create_postgres_database: Callable[[], str]) -> AsyncIterator[Database]:
    url = create_postgres_database()
    await asyncio.to_thread(upgrade, url)
    database = Database(url, pool_size=2)
    yield database
    await database.dispose()


async def _post(
    db: Database, user_id: str, limit: int = LIMIT
) -> chat_service_pb2.PostMessageResponse:
    limits = PostLimits(
        max_content_chars=1000, idempotency_ttl_s=60, max_messages_per_minute=limit
    )
    request = chat_service_pb2.PostMessageRequest(content="Hello there")
    response, effects = await post_message(
        db, TOPOLOGY, CATALOG, limits, user_id, request
    )
    assert effects.outbox_rows == 1
    return response


async def _count(db: Database, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    async with db.transaction() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar_one())


async def test_first_messages_stored_until_the_limit(db: Database) -> None:
    # The limit counts per wall-clock minute: start away from its end, so
    # that the posts below fall in one window.
    if time.time() % 60 > 55:
        await asyncio.sleep(61 - time.time() % 60)

    posted = [await _post(db, "u1") for _ in range(LIMIT)]
    with pytest.raises(RateLimitedError) as limited:
        await _post(db, "u1")
    other = await _post(db, "u2")

    assert 1 <= int(limited.value.metadata["retry_after_s"]) <= 60
    first = posted[0]
    assert first.message.seq == 1
    assert first.message.role == types_pb2.MESSAGE_ROLE_USER
    assert first.message.content == "Hello there"
    assert first.run.status == types_pb2.RUN_STATUS_QUEUED
    assert first.run.chat_id == first.chat_id
    assert len({response.chat_id for response in posted}) == LIMIT

    # The rejected message left no row behind and was not counted.
    assert await _count(db, chats, chats.c.user_id == "u1") == LIMIT
    assert await _count(db, runs, runs.c.user_id == "u1", runs.c.dispatched) == LIMIT
    assert await _count(db, messages) == LIMIT + 1
    assert await _count(db, outbox) == LIMIT + 1
    async with db.transaction() as conn:
        counters = (await conn.execute(sa.select(message_rate_counters))).all()
    assert sorted((row.user_id, row.count) for row in counters) == [
        ("u1", LIMIT),
        ("u2", 1),
    ]
    assert other.run.status == types_pb2.RUN_STATUS_QUEUED


async def test_first_message_without_limit_writes_no_counter(db: Database) -> None:
    for _ in range(LIMIT + 2):
        await _post(db, "u3", limit=0)

    assert await _count(db, chats) == LIMIT + 2
    assert await _count(db, message_rate_counters) == 0
