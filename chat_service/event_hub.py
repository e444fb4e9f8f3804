"""Fan-out of committed run events to the watchers in this process.

After a transaction commits, its new events go to :meth:`EventHub.publish`,
which hands them to local watchers at once and publishes a notice (run id
and sequence number, no text) on core NATS. A replica that receives a
notice for a run with local watchers reads the new events from the database
once and hands them to every watcher of that run. So a run with many
watchers on one replica costs one read per notice, not one per watcher.
Notices that arrive while that read runs are folded into one more read. A lost notice
only delays a watcher until its next database poll.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from uuid import UUID, uuid4

from google.protobuf.message import DecodeError

from bulkhead.log import get_logger
from bulkhead.proto.chat.v1 import types_pb2

logger = get_logger(__name__)

Publisher = Callable[[str, bytes], Awaitable[None]]
# Returns the run's events after a sequence number, oldest first.
EventReader = Callable[[UUID, int], Awaitable[list[types_pb2.RunEvent]]]


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
        # Seq of the last event the watcher sent on, set while it follows
        # the hub; None for a watcher that only waits for the run to end.
        self.last_seq: int | None = None

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


class EventHub:
    """Delivers committed events to watchers in this process and, through
    core NATS, in every other chat_service replica."""

    def __init__(
        self,
        subject_for: Callable[[str], str],
        queue_size: int,
        read_events: EventReader | None = None,
    ) -> None:
        self._origin = uuid4().hex
        self._subject_for = subject_for
        self._queue_size = queue_size
        self._read_events = read_events
        self._subscriptions: dict[UUID, set[Subscription]] = defaultdict(set)
        self._publisher: Publisher | None = None
        # Per run with watchers: the highest seq handed to them, the highest
        # seq that notices announced and no read has covered yet, and the
        # task reading it from the database.
        self._delivered_seq: dict[UUID, int] = {}
        self._notified_seq: dict[UUID, int] = {}
        self._reads: dict[UUID, asyncio.Task[None]] = {}

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
            self._delivered_seq.pop(subscription.run_id, None)
            self._notified_seq.pop(subscription.run_id, None)

    @property
    def watcher_count(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    def deliver_local(self, run_id: UUID, events: Iterable[types_pb2.RunEvent]) -> None:
        watchers = self._subscriptions.get(run_id)
        if not watchers:
            return
        last = self._delivered_seq.get(run_id, 0)
        for event in events:
            last = max(last, event.seq)
            for subscription in list(watchers):
                subscription.offer(event)
        self._delivered_seq[run_id] = last

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
        """Hand the events that another replica stored to local watchers."""
        notice = types_pb2.RunEventNotice()
        try:
            notice.ParseFromString(payload)
            run_id = UUID(notice.run_id)
        except (ValueError, TypeError, DecodeError) as error:
            logger.warning("malformed event notice dropped", error=str(error))
            return
        if notice.origin == self._origin or run_id not in self._subscriptions:
            return
        if self._read_events is None:
            for subscription in list(self._subscriptions[run_id]):
                subscription.offer(None)
            return
        known = self._notified_seq.get(run_id, 0)
        self._notified_seq[run_id] = max(known, notice.last_seq)
        if run_id not in self._reads:
            self._reads[run_id] = asyncio.create_task(self._read_for_watchers(run_id))

    async def _read_for_watchers(self, run_id: UUID) -> None:
        """Read a run's announced events, once per round for all its watchers."""
        try:
            while run_id in self._notified_seq:
                await self._read_round(run_id, self._notified_seq.pop(run_id))
        finally:
            self._notified_seq.pop(run_id, None)
            del self._reads[run_id]

    async def _read_round(self, run_id: UUID, target_seq: int) -> None:
        """Hand the watchers of a run the events up to ``target_seq`` they lack."""
        watchers = list(self._subscriptions.get(run_id, ()))
        following = [s for s in watchers if s.last_seq is not None]
        for subscription in watchers:
            if subscription.last_seq is None:
                subscription.offer(None)
        if not following:
            return

        # Events up to the delivered seq are already in the watchers' inboxes,
        # or the watcher found its inbox overflowed and reads for itself.
        delivered = self._delivered_seq.get(run_id, 0)
        after = max(delivered, min(s.last_seq or 0 for s in following))
        if after >= target_seq:
            return

        assert self._read_events is not None
        try:
            events = await self._read_events(run_id, after)
        except Exception as error:  # noqa: BLE001 - each watcher reads for itself
            logger.warning(
                "reading events for watchers failed",
                run_id=str(run_id),
                error=str(error),
            )
            for subscription in following:
                subscription.offer(None)
            return
        self.deliver_local(run_id, events)
        if events and events[-1].seq < target_seq:
            # A page did not reach the announced seq: read the rest next round.
            known = self._notified_seq.get(run_id, 0)
            self._notified_seq[run_id] = max(known, target_seq)
