"""Reading a run's events as they happen: WatchRun and WaitRun.

A watcher subscribes to the hub first and then reads the database, so no
event can fall between the two. It yields events strictly in sequence: an
event from the hub is used only if it is the next one expected; anything
else (a gap, an overflowed inbox, a notice from another replica, a quiet
period) sends it back to the database, which is the source of truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from bulkhead.proto.chat.v1 import types_pb2
from chat_service.event_hub import EventHub, EventReader, Subscription
from chat_service.events import TERMINAL_EVENTS, events_after
from chat_service.store.database import Database
from chat_service.store.queries import TERMINAL_STATUSES, get_run_row

PAGE = 500


async def watch_events(
    db: Database, hub: EventHub, run: Any, after_seq: int, poll_s: float
) -> AsyncIterator[types_pb2.RunEvent]:
    """Yield the run's events after ``after_seq`` until its terminal event."""
    subscription = hub.subscribe(run.id)
    last = after_seq
    try:
        while True:
            # Two reads without a common snapshot: events stored between them
            # make the run row newer than ``last``, and the loop reads again.
            async with db.single_statement() as conn:
                events = await events_after(conn, run.id, last, PAGE)
                current = await get_run_row(conn, run.id) if not events else None
            for event in events:
                yield event
                last = event.seq
                if event.type in TERMINAL_EVENTS:
                    return
            if len(events) == PAGE:
                continue
            if current is not None and current.status in TERMINAL_STATUSES:
                if current.event_seq <= last:
                    return  # the terminal event is at or before after_seq
                continue
            subscription.overflowed = False
            subscription.last_seq = last
            async for event in _follow(subscription, last, poll_s):
                yield event
                last = event.seq
                if event.type in TERMINAL_EVENTS:
                    return
    finally:
        hub.unsubscribe(subscription)


def event_reader(db: Database) -> EventReader:
    """Return the hub's reader: a run's events after a seq, one page at a time."""

    async def read(run_id: UUID, after_seq: int) -> list[types_pb2.RunEvent]:
        async with db.single_statement() as conn:
            return await events_after(conn, run_id, after_seq, PAGE)

    return read


async def _follow(
    subscription: Subscription, last: int, poll_s: float
) -> AsyncIterator[types_pb2.RunEvent]:
    """Yield consecutive events from the hub; return when the database must be read."""
    while True:
        try:
            event = await asyncio.wait_for(subscription.queue.get(), timeout=poll_s)
        except TimeoutError:
            return
        if event is None:
            return  # another replica stored events: read them from the database
        if event.seq <= last:
            continue  # a copy of an event already sent (local delivery and broadcast)
        if event.seq != last + 1 or subscription.overflowed:
            subscription.drain()
            return
        yield event
        last = subscription.last_seq = event.seq


async def wait_for_terminal(
    db: Database, hub: EventHub, run_id: UUID, timeout_s: float, poll_s: float
) -> bool:
    """Wait until the run is terminal or the timeout passes; return whether it ended."""
    subscription = hub.subscribe(run_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            async with db.single_statement() as conn:
                run = await get_run_row(conn, run_id)
            if run.status in TERMINAL_STATUSES:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(
                    _next_terminal(subscription), timeout=min(remaining, poll_s)
                )
            except TimeoutError:
                pass
    finally:
        hub.unsubscribe(subscription)


async def _next_terminal(subscription: Subscription) -> None:
    while True:
        event = await subscription.queue.get()
        if event is None or event.type in TERMINAL_EVENTS or subscription.overflowed:
            return
