"""The run event log and its fan-out to watchers.

Events are rows of ``run_events`` with a dense per-run sequence number; they
are the source of truth for SSE streams. After a transaction commits, the
new events are handed to the :class:`EventHub`, which gives them to local
watchers at once and publishes a notice (run id and sequence number, no
text) on core NATS, so that watchers connected to other chat_service
replicas read the new events from the database. A lost notice only delays a
watcher until its next database poll.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import orjson
from google.protobuf.message import DecodeError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.log import get_logger
from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.rpc import to_timestamp
from chat_service.store.database import as_utc, utcnow
from chat_service.store.queries import update_run
from chat_service.store.tables import run_events

logger = get_logger(__name__)
_INSERT_EVENTS = insert(run_events)

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})


def encode_data(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def to_proto(
    seq: int, type_: str, data: str, created_at: datetime
) -> types_pb2.RunEvent:
    return types_pb2.RunEvent(
        seq=seq, type=type_, data_json=data, created_at=to_timestamp(as_utc(created_at))
    )


async def append_events(
    conn: AsyncConnection,
    run_id: UUID,
    event_seq: int,
    events: Iterable[tuple[str, dict[str, Any]]],
    advance_counter: bool = True,
) -> list[types_pb2.RunEvent]:
    """Insert events after ``event_seq`` (the run's current counter, read under
    the run's row lock) and return them.

    With ``advance_counter=False`` the caller stores the new counter
    (``runs.event_seq``, the last returned seq) in its own update of the run,
    which saves a statement on the hot paths.
    """
    now = utcnow()
    rows = []
    seq = event_seq
    for type_, data in events:
        seq += 1
        rows.append(
            {
                "run_id": run_id,
                "seq": seq,
                "type": type_,
                "data": encode_data(data),
                "created_at": now,
            }
        )
    if not rows:
        return []
    await conn.execute(_INSERT_EVENTS, rows)
    if advance_counter:
        await update_run(conn, run_id, {"event_seq": seq})
    return [to_proto(r["seq"], r["type"], r["data"], now) for r in rows]


async def events_after(
    conn: AsyncConnection, run_id: UUID, after_seq: int, limit: int
) -> list[types_pb2.RunEvent]:
    result = await conn.execute(
        select(
            run_events.c.seq,
            run_events.c.type,
            run_events.c.data,
            run_events.c.created_at,
        )
        .where(run_events.c.run_id == run_id, run_events.c.seq > after_seq)
        .order_by(run_events.c.seq)
        .limit(limit)
    )
    return [to_proto(r.seq, r.type, r.data, r.created_at) for r in result]


@dataclass
class AfterCommit:
    """Side effects to perform once a transaction has committed."""

    events: dict[UUID, list[types_pb2.RunEvent]] = field(default_factory=dict)
    cancelled_runs: list[UUID] = field(default_factory=list)
    outbox_rows: int = 0

    def add_events(self, run_id: UUID, events: list[types_pb2.RunEvent]) -> None:
        if events:
            self.events.setdefault(run_id, []).extend(events)


class Subscription:
    """A watcher's bounded inbox of events for one run.

    An item is either an event stored by this process or ``None``, a wake-up
    that means "newer events are in the database". When the inbox is full
    the subscription is marked ``overflowed`` and further items are dropped,
    so the watcher reads from the database: a slow watcher costs bounded
    memory and loses nothing.
    """

    def __init__(self, run_id: UUID, size: int) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[types_pb2.RunEvent | None] = asyncio.Queue(
            maxsize=size
        )
        self.overflowed = False

    def offer(self, item: types_pb2.RunEvent | None) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


Publisher = Callable[[str, bytes], Awaitable[None]]
OnCommit = Callable[[AfterCommit], Awaitable[None]]


class EventHub:
    """Delivers committed events to watchers in this process and, through
    core NATS, in every other chat_service replica."""

    def __init__(self, subject_for: Callable[[str], str], queue_size: int) -> None:
        self._origin = uuid4().hex
        self._subject_for = subject_for
        self._queue_size = queue_size
        self._subscriptions: dict[UUID, set[Subscription]] = defaultdict(set)
        self._publisher: Publisher | None = None

    def set_publisher(self, publisher: Publisher | None) -> None:
        self._publisher = publisher

    def subscribe(self, run_id: UUID) -> Subscription:
        subscription = Subscription(run_id, self._queue_size)
        self._subscriptions[run_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        watchers = self._subscriptions.get(subscription.run_id)
        if watchers is None:
            return
        watchers.discard(subscription)
        if not watchers:
            del self._subscriptions[subscription.run_id]

    @property
    def watcher_count(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    def deliver_local(self, run_id: UUID, events: Iterable[types_pb2.RunEvent]) -> None:
        watchers = self._subscriptions.get(run_id)
        if not watchers:
            return
        for event in events:
            for subscription in list(watchers):
                subscription.offer(event)

    async def publish(self, run_id: UUID, events: list[types_pb2.RunEvent]) -> None:
        """Deliver locally, then notify other replicas (best effort)."""
        self.deliver_local(run_id, events)
        if self._publisher is None or not events:
            return
        notice = types_pb2.RunEventNotice(
            run_id=str(run_id), last_seq=events[-1].seq, origin=self._origin
        )
        try:
            await self._publisher(
                self._subject_for(str(run_id)), notice.SerializeToString()
            )
        except Exception as error:  # noqa: BLE001 - a lost notice only delays watchers
            logger.debug("event notice failed", run_id=str(run_id), error=str(error))

    def on_notice(self, payload: bytes) -> None:
        """Wake local watchers of a run whose events another replica stored."""
        notice = types_pb2.RunEventNotice()
        try:
            notice.ParseFromString(payload)
            run_id = UUID(notice.run_id)
        except (ValueError, TypeError, DecodeError) as error:
            logger.warning("malformed event notice dropped", error=str(error))
            return
        if notice.origin == self._origin:
            return
        for subscription in list(self._subscriptions.get(run_id, ())):
            subscription.offer(None)
