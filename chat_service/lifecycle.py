"""Run transitions shared by every path that ends or schedules a run.

Per-chat order: at most one run of a chat is dispatched (has a task in
flight) at a time. A run posted while another run of its chat is active
waits undispatched; when a run ends, :func:`dispatch_next` schedules the
oldest waiting run of the chat in the same transaction.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.messaging import Topology
from chat_service.events import AfterCommit, append_events
from chat_service.outbox import enqueue_task
from chat_service.store.database import utcnow
from chat_service.store.deferred import defer_update
from chat_service.store.queries import ACTIVE_STATUSES, update_run
from chat_service.store.tables import chats, messages, runs

_TERMINAL_EVENT = {
    "completed": "run.completed",
    "failed": "run.failed",
    "cancelled": "run.cancelled",
}
_MESSAGE_STATUS = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


async def lock_chat(conn: AsyncConnection, chat_id: UUID) -> None:
    """Take the chat's row lock, which serializes dispatch decisions per chat."""
    await conn.execute(
        select(chats.c.id).where(chats.c.id == chat_id).with_for_update()
    )


async def finish_run(
    conn: AsyncConnection,
    run: Any,
    status: str,
    effects: AfterCommit,
    topology: Topology,
    data: dict[str, Any],
    *,
    dispatch: bool = True,
    **values: Any,
) -> None:
    """Move a locked, active run to a terminal status with its terminal event,
    close its assistant message, and dispatch the next run of the chat.

    With ``dispatch`` False the next run is not dispatched. A caller that ends
    every active run of the chat passes it, because each waiting run would
    otherwise be dispatched only to be cancelled.
    """
    now = utcnow()
    event = {"status": status, **data}
    stored = await append_events(
        conn,
        run.id,
        run.event_seq,
        [(_TERMINAL_EVENT[status], event)],
        advance_counter=False,
    )
    await update_run(
        conn,
        run.id,
        {
            "status": status,
            "finished_at": now,
            "updated_at": now,
            "lease_expires_at": None,
            "worker_id": None,
            "event_seq": stored[-1].seq,
            **values,
        },
    )
    if run.assistant_message_id is not None:
        await defer_update(
            conn,
            messages,
            ("id", run.assistant_message_id),
            {"status": _MESSAGE_STATUS[status], "updated_at": now},
        )
    effects.add_events(run.id, stored)
    if status == "cancelled":
        effects.cancelled_runs.append(run.id)
    if dispatch:
        await dispatch_next(conn, run.chat_id, effects, topology)


async def dispatch_next(
    conn: AsyncConnection, chat_id: UUID, effects: AfterCommit, topology: Topology
) -> UUID | None:
    """Dispatch the oldest waiting run of the chat if no run of it is in flight."""
    # Most chats have no waiting run: find out without taking the chat lock.
    if await _oldest_waiting(conn, chat_id) is None:
        return None
    await lock_chat(conn, chat_id)
    in_flight = (
        await conn.execute(
            select(runs.c.id)
            .where(
                runs.c.chat_id == chat_id,
                runs.c.status.in_(ACTIVE_STATUSES),
                runs.c.dispatched.is_(True),
            )
            .limit(1)
        )
    ).first()
    if in_flight is not None:
        return None
    waiting = await _oldest_waiting(conn, chat_id)
    if waiting is None:
        return None
    now = utcnow()
    await update_run(
        conn, waiting, {"dispatched": True, "dispatched_at": now, "updated_at": now}
    )
    await enqueue_task(conn, topology, waiting, "agent")
    effects.outbox_rows += 1
    return waiting


async def _oldest_waiting(conn: AsyncConnection, chat_id: UUID) -> UUID | None:
    row = (
        await conn.execute(
            select(runs.c.id)
            .where(
                runs.c.chat_id == chat_id,
                runs.c.status == "queued",
                runs.c.dispatched.is_(False),
            )
            .order_by(runs.c.user_message_seq, runs.c.created_at)
            .limit(1)
        )
    ).first()
    return row.id if row else None
