"""PostMessage's group path on PostgreSQL: messages that start chats, without
an idempotency key, are stored and counted against the rate limit by one
statement per group that commits by itself."""

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
from chat_service.store import first_messages
from chat_service.store.database import Database
from chat_service.store.first_messages import FirstMessageWriter
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
    db: Database,
    user_id: str,
    limit: int = LIMIT,
    writer: FirstMessageWriter | None = None,
) -> chat_service_pb2.PostMessageResponse:
    limits = PostLimits(
        max_content_chars=1000, idempotency_ttl_s=60, max_messages_per_minute=limit
    )
    request = chat_service_pb2.PostMessageRequest(content="Hello there")
    response, effects = await post_message(
        db,
        TOPOLOGY,
        CATALOG,
        limits,
        user_id,
        request,
        first_messages=writer or FirstMessageWriter(db),
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

    # The rejected message left no row behind. It was counted, which keeps
    # the count exact for groups and changes no later decision.
    assert await _count(db, chats, chats.c.user_id == "u1") == LIMIT
    assert await _count(db, runs, runs.c.user_id == "u1", runs.c.dispatched) == LIMIT
    assert await _count(db, messages) == LIMIT + 1
    assert await _count(db, outbox) == LIMIT + 1
    async with db.transaction() as conn:
        counters = (await conn.execute(sa.select(message_rate_counters))).all()
    assert sorted((row.user_id, row.count) for row in counters) == [
        ("u1", LIMIT + 1),
        ("u2", 1),
    ]
    assert other.run.status == types_pb2.RUN_STATUS_QUEUED


async def test_first_message_without_limit_writes_no_counter(db: Database) -> None:
    for _ in range(LIMIT + 2):
        await _post(db, "u3", limit=0)

    assert await _count(db, chats) == LIMIT + 2
    assert await _count(db, message_rate_counters) == 0


async def _post_all(
    db: Database, writers: list[FirstMessageWriter], users: list[str]
) -> list[chat_service_pb2.PostMessageResponse | BaseException]:
    """Post one message per entry of ``users`` at once, spread over ``writers``."""
    posts = [
        _post(db, user_id, writer=writers[index % len(writers)])
        for index, user_id in enumerate(users)
    ]
    return await asyncio.gather(*posts, return_exceptions=True)


async def test_concurrent_first_messages_share_statements(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if time.time() % 60 > 55:
        await asyncio.sleep(61 - time.time() % 60)
    groups: list[int] = []
    insert = first_messages.insert_first_messages

    async def recording_insert(*args: object) -> list[bool]:
        groups.append(len(args[1]))  # type: ignore[arg-type]
        return await insert(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(first_messages, "insert_first_messages", recording_insert)

    users = ["a", "b"] * 10 + ["c"]
    results = await _post_all(db, [FirstMessageWriter(db)], users)

    stored = [r for r in results if isinstance(r, chat_service_pb2.PostMessageResponse)]
    limited = [r for r in results if isinstance(r, RateLimitedError)]
    assert len(stored) == 2 * LIMIT + 1
    assert len(limited) == len(users) - len(stored)
    assert len(results) == len(stored) + len(limited)
    # The posts went out in a few statements of several messages each.
    assert sum(groups) == len(users)
    assert max(groups) > 1
    assert len(groups) <= first_messages.MAX_IN_FLIGHT + 2
    for user_id, expected in (("a", LIMIT), ("b", LIMIT), ("c", 1)):
        assert await _count(db, chats, chats.c.user_id == user_id) == expected
        assert await _count(db, runs, runs.c.user_id == user_id) == expected
    assert await _count(db, messages) == len(stored)
    assert await _count(db, outbox) == len(stored)
    # Every stored message got the rows of its own response.
    for response in stored:
        assert await _count(db, chats, chats.c.id == response.chat_id) == 1
        assert await _count(db, runs, runs.c.id == response.run.id) == 1


async def test_limit_exact_across_writers(db: Database) -> None:
    # Two writers are two chat_service replicas: their groups for one user
    # run at the same time and wait for each other's counter row.
    if time.time() % 60 > 55:
        await asyncio.sleep(61 - time.time() % 60)
    writers = [FirstMessageWriter(db), FirstMessageWriter(db)]

    results = await _post_all(db, writers, ["d"] * 24)

    stored = [r for r in results if isinstance(r, chat_service_pb2.PostMessageResponse)]
    assert len(stored) == LIMIT
    assert all(
        isinstance(r, RateLimitedError)
        for r in results
        if not isinstance(r, chat_service_pb2.PostMessageResponse)
    )
    assert await _count(db, chats, chats.c.user_id == "d") == LIMIT


async def test_group_without_limit_stores_everything(db: Database) -> None:
    writer = FirstMessageWriter(db)
    posts = [_post(db, "e", limit=0, writer=writer) for _ in range(30)]

    results = await asyncio.gather(*posts)

    assert len({response.chat_id for response in results}) == 30
    assert await _count(db, chats, chats.c.user_id == "e") == 30
    assert await _count(db, outbox) == 30
    assert await _count(db, message_rate_counters) == 0


async def test_failed_group_raises_for_every_message() -> None:
    # Nothing listens on port 1, so the group's statement fails to connect.
    database = Database(
        "postgresql+asyncpg://postgres@127.0.0.1:1/none", connect_timeout_s=1
    )
    writer = FirstMessageWriter(database)
    try:
        results = await asyncio.gather(
            *[_post(database, f"f{n}", writer=writer) for n in range(5)],
            return_exceptions=True,
        )
    finally:
        await database.dispose()

    assert [type(result).__name__ for result in results] == [
        "DatabaseUnavailableError"
    ] * 5
