"""The outbox relay against PostgreSQL and a real JetStream stream: a batch
with a row that cannot be published stays in the table as a whole,
publishing it again adds no duplicate to the stream, and a deleted stream
is created again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.js import JetStreamContext
from sqlalchemy import delete, func, select

from bulkhead.messaging import Subjects, Topology, ensure_stream
from chat_service.migrate import upgrade
from chat_service.outbox import OutboxRelay, PublishFailedError, enqueue_task
from chat_service.store.database import Database
from chat_service.store.tables import outbox

pytestmark = pytest.mark.postgres

GOOD_ROWS = 6


@pytest.fixture
async def database(
    create_postgres_database: Callable[[], str],
) -> AsyncIterator[Database]:
    url = create_postgres_database()
    await asyncio.to_thread(upgrade, url)
    db = Database(url, pool_size=2)
    yield db
    await db.dispose()


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[tuple[JetStreamContext, Topology]]:
    suffix = uuid.uuid4().hex[:12]
    topology = Topology(
        stream=f"BULKHEAD_TEST_RELAY_{suffix}", subjects=Subjects(f"relay{suffix}")
    )
    client = await nats.connect(nats_url, connect_timeout=5)
    js = client.jetstream(timeout=5)
    await ensure_stream(js, topology)
    yield js, topology
    await js.delete_stream(topology.stream)
    await client.close()


async def _outbox_rows(database: Database) -> int:
    async with database.transaction() as conn:
        count = await conn.execute(select(func.count()).select_from(outbox))
        return int(count.scalar_one())


async def test_relay_batch_kept_until_all_published(
    database: Database, stream: tuple[JetStreamContext, Topology]
) -> None:
    js, topology = stream
    async with database.transaction() as conn:
        for _ in range(GOOD_ROWS):
            await enqueue_task(conn, topology, uuid.uuid4(), "agent")
        # No stream listens on this subject, so JetStream rejects the publish.
        await enqueue_task(conn, topology, uuid.uuid4(), "agent")
        await conn.execute(
            outbox.update()
            .where(outbox.c.id == select(func.max(outbox.c.id)).scalar_subquery())
            .values(subject="not-in-any-stream")
        )
    relay = OutboxRelay(database, batch_size=50, poll_s=0.05)
    relay.attach(js)

    await relay._drain()

    assert relay.published == 0
    assert await _outbox_rows(database) == GOOD_ROWS + 1
    # The rows that did go out are in the stream once.
    assert (await js.stream_info(topology.stream)).state.messages == GOOD_ROWS

    async with database.transaction() as conn:
        await conn.execute(
            delete(outbox).where(outbox.c.subject == "not-in-any-stream")
        )
    await relay._drain()

    assert relay.published == GOOD_ROWS
    assert await _outbox_rows(database) == 0
    # Published again under the same Nats-Msg-Id: JetStream dropped the repeats.
    assert (await js.stream_info(topology.stream)).state.messages == GOOD_ROWS


async def _one_row_without_stream(
    database: Database, js: JetStreamContext, topology: Topology
) -> OutboxRelay:
    """Delete the stream, store one outbox row, and return a relay for it."""
    await js.delete_stream(topology.stream)
    async with database.transaction() as conn:
        await enqueue_task(conn, topology, uuid.uuid4(), "agent")
    return OutboxRelay(database, batch_size=50, poll_s=0.05)


async def test_relay_creates_missing_stream_again(
    database: Database, stream: tuple[JetStreamContext, Topology]
) -> None:
    js, topology = stream
    relay = await _one_row_without_stream(database, js, topology)
    relay.attach(js, lambda: ensure_stream(js, topology))

    # The first batch finds no stream, and the relay creates it again.
    await relay._drain()

    assert relay.published == 0
    assert await _outbox_rows(database) == 1
    assert (await js.stream_info(topology.stream)).state.messages == 0

    await relay._drain()

    assert relay.published == 1
    assert await _outbox_rows(database) == 0
    assert (await js.stream_info(topology.stream)).state.messages == 1


async def test_relay_publish_failure_not_database_outage(
    database: Database, stream: tuple[JetStreamContext, Topology]
) -> None:
    js, topology = stream
    relay = await _one_row_without_stream(database, js, topology)
    relay.attach(js)

    with pytest.raises(PublishFailedError) as raised:
        await relay._relay_batch()

    assert raised.value.stream_missing
    assert "publish to JetStream failed" in str(raised.value)
    assert await _outbox_rows(database) == 1
    await ensure_stream(js, topology)
