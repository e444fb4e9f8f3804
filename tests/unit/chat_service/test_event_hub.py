"""EventHub: events that another replica stored reach this replica's watchers
through one database read per notice, however many watchers a run has."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID

import pytest

from bulkhead.messaging import Subjects, Topology
from bulkhead.models import load_catalog
from bulkhead.proto.chat.v1 import chat_service_pb2, types_pb2
from chat_service.event_hub import EventHub, Subscription
from chat_service.events import append_events
from chat_service.posting import PostLimits, post_message
from chat_service.store.database import Database
from chat_service.store.first_messages import FirstMessageWriter
from chat_service.store.queries import get_run_row
from chat_service.watch import event_reader
from tests.conftest import REPO_ROOT

OTHER_REPLICA = "other-replica"
WATCHERS = 5


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=2)
    yield database
    await database.dispose()


class CountingReader:
    """The service's event reader, counting its calls."""

    def __init__(self, db: Database) -> None:
        self._read = event_reader(db)
        self.calls = 0

    async def __call__(self, run_id: UUID, after_seq: int) -> list[types_pb2.RunEvent]:
        self.calls += 1
        return await self._read(run_id, after_seq)


async def _new_run(db: Database) -> UUID:
    response, _ = await post_message(
        db,
        Topology(stream="HUB", subjects=Subjects("hub")),
        load_catalog(str(REPO_ROOT / "config" / "models.toml")),
        PostLimits(max_content_chars=100, idempotency_ttl_s=60),
        "hub-user",
        chat_service_pb2.PostMessageRequest(content="hello"),
        first_messages=FirstMessageWriter(db),
    )
    return UUID(response.run.id)


async def _store_deltas(db: Database, run_id: UUID, count: int) -> int:
    """Store ``count`` delta events as another replica would; return the last seq."""
    async with db.transaction() as conn:
        run = await get_run_row(conn, run_id, lock=True)
        deltas = [("message.delta", {"text": f"t{n}"}) for n in range(count)]
        events = await append_events(conn, run_id, run.event_seq, deltas)
    return events[-1].seq


def _notice(run_id: UUID, last_seq: int, origin: str = OTHER_REPLICA) -> bytes:
    notice = types_pb2.RunEventNotice(
        run_id=str(run_id), last_seq=last_seq, origin=origin
    )
    return notice.SerializeToString()


async def _received(subscription: Subscription, count: int) -> list[int | None]:
    items = []
    for _ in range(count):
        item = await asyncio.wait_for(subscription.queue.get(), timeout=10)
        items.append(None if item is None else item.seq)
    return items


def _hub(reader: CountingReader | None) -> EventHub:
    return EventHub(lambda run_id: f"hub.events.{run_id}", 100, read_events=reader)


async def test_one_read_for_all_watchers(db: Database) -> None:
    reader = CountingReader(db)
    hub = _hub(reader)
    run_id = await _new_run(db)
    watchers = [hub.subscribe(run_id) for _ in range(WATCHERS)]
    for watcher in watchers:
        watcher.last_seq = 0

    last_seq = await _store_deltas(db, run_id, 3)
    # Three notices before the read starts are folded into one read.
    for seq in range(1, last_seq + 1):
        hub.on_notice(_notice(run_id, seq))

    for watcher in watchers:
        assert await _received(watcher, 3) == [1, 2, 3]
    assert reader.calls == 1


async def test_read_starts_after_delivered_events(db: Database) -> None:
    reader = CountingReader(db)
    hub = _hub(reader)
    run_id = await _new_run(db)
    ahead, behind = hub.subscribe(run_id), hub.subscribe(run_id)
    ahead.last_seq, behind.last_seq = 2, 0

    await _store_deltas(db, run_id, 2)
    hub.on_notice(_notice(run_id, 2))
    assert await _received(behind, 2) == [1, 2]
    last_seq = await _store_deltas(db, run_id, 2)
    hub.on_notice(_notice(run_id, last_seq))

    # The second read started after seq 2, which both inboxes already had.
    assert await _received(behind, 2) == [3, 4]
    assert await _received(ahead, 4) == [1, 2, 3, 4]
    assert reader.calls == 2


async def test_waiter_woken_without_read(db: Database) -> None:
    reader = CountingReader(db)
    hub = _hub(reader)
    run_id = await _new_run(db)
    waiter = hub.subscribe(run_id)  # WaitRun: no last_seq

    hub.on_notice(_notice(run_id, 1))

    assert await _received(waiter, 1) == [None]
    assert reader.calls == 0


async def test_own_and_unwatched_notices_ignored(db: Database) -> None:
    reader = CountingReader(db)
    hub = _hub(reader)
    run_id = await _new_run(db)
    sent: list[bytes] = []

    async def capture(_subject: str, payload: bytes) -> None:
        sent.append(payload)

    hub.set_publisher(capture)
    await hub.publish(run_id, [types_pb2.RunEvent(seq=1, type="message.delta")])
    watcher = hub.subscribe(run_id)
    watcher.last_seq = 0
    await _store_deltas(db, run_id, 1)

    hub.on_notice(sent[0])  # this hub's own notice
    hub.on_notice(_notice(uuid.uuid4(), 1))
    hub.on_notice(b"\xff not a notice")
    await asyncio.sleep(0.2)

    assert len(sent) == 1
    assert watcher.queue.empty()
    assert reader.calls == 0


async def test_failed_read_wakes_watchers(tmp_path: Path) -> None:
    # Nothing listens on port 1, so every read fails to connect.
    unreachable = Database(
        "postgresql+asyncpg://postgres@127.0.0.1:1/none", connect_timeout_s=1
    )
    reader = CountingReader(unreachable)
    hub = _hub(reader)
    run_id = uuid.uuid4()
    watchers = [hub.subscribe(run_id) for _ in range(2)]
    for watcher in watchers:
        watcher.last_seq = 0

    hub.on_notice(_notice(run_id, 1))

    for watcher in watchers:
        assert await _received(watcher, 1) == [None]
    assert reader.calls == 1
    await unreachable.dispose()
