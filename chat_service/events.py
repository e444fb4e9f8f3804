"""The run event log.

Events are rows of ``run_events`` with a dense per-run sequence number; they
are the source of truth for SSE streams. After a transaction commits, the
new events go to watchers through ``chat_service.event_hub``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.log import get_logger
from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.rpc import to_timestamp
from chat_service.store.database import as_utc, utcnow
from chat_service.store.deferred import defer_insert
from chat_service.store.queries import update_run
from chat_service.store.tables import run_events

logger = get_logger(__name__)

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
    await defer_insert(conn, run_events, rows)
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


OnCommit = Callable[[AfterCommit], Awaitable[None]]
