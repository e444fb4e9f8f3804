"""User actions on runs: cancel and retry."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.messaging import Topology
from chat_service.errors import RunFinishedError, RunNotRetryableError
from chat_service.events import AfterCommit
from chat_service.lifecycle import dispatch_next, finish_run, lock_chat
from chat_service.store.database import utcnow
from chat_service.store.queries import get_run_row, lock_run_and_chat, parse_uuid
from chat_service.store.tables import messages, runs


async def cancel_run(
    conn: AsyncConnection, user_id: str, run_id: str, topology: Topology
) -> tuple[Any, AfterCommit]:
    """Cancel an active run of the user; cancelling a cancelled run is a no-op.

    Raises RunFinishedError for a completed or failed run.
    """
    run = await lock_run_and_chat(conn, parse_uuid(run_id, "run"), user_id)
    effects = AfterCommit()
    if run.status == "cancelled":
        return run, effects
    if run.status in ("completed", "failed"):
        raise RunFinishedError(f"The run is already {run.status}.", status=run.status)
    await finish_run(
        conn, run, "cancelled", effects, topology, {"reason": "cancelled by user"}
    )
    return await get_run_row(conn, run.id), effects


async def retry_run(
    conn: AsyncConnection, user_id: str, run_id: str, topology: Topology
) -> tuple[Any, AfterCommit]:
    """Start a new run for the user message of a failed or cancelled run.

    Only the newest run of a user message may be retried, so two concurrent
    retries create one new run.
    """
    old = await get_run_row(conn, parse_uuid(run_id, "run"), user_id)
    await lock_chat(conn, old.chat_id)
    newest = (
        await conn.execute(
            select(runs)
            .where(runs.c.user_message_id == old.user_message_id)
            .order_by(runs.c.created_at.desc())
            .limit(1)
        )
    ).one()
    if newest.id != old.id:
        raise RunNotRetryableError(
            "A newer run exists for this message.", run_id=str(newest.id)
        )
    if old.status not in ("failed", "cancelled"):
        raise RunNotRetryableError(
            f"Only failed or cancelled runs can be retried; this run is {old.status}."
        )

    now = utcnow()
    new_id = uuid.uuid4()
    values = {column.name: getattr(old, column.name) for column in runs.columns} | {
        "id": new_id,
        "assistant_message_id": None,
        "status": "queued",
        "stage": "agent",
        "dispatched": False,
        "dispatched_at": None,
        "model_used": None,
        "error_code": None,
        "error_message": None,
        "attempt": 0,
        "worker_id": None,
        "lease_expires_at": None,
        "plan": None,
        "event_seq": 0,
        "output_batch": 0,
        "has_output": False,
        "prompt_tokens": None,
        "completion_tokens": None,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
    }
    await conn.execute(insert(runs).values(values))
    await conn.execute(
        update(messages)
        .where(messages.c.id == old.user_message_id)
        .values(run_id=new_id)
    )
    effects = AfterCommit()
    await dispatch_next(conn, old.chat_id, effects, topology)
    return await get_run_row(conn, new_id), effects


async def fail_abandoned_run(
    conn: AsyncConnection, run_id: Any, code: str, message: str, topology: Topology
) -> AfterCommit:
    """Fail an active run that no worker can finish; a no-op if it already ended."""
    effects = AfterCommit()
    run = await lock_run_and_chat(conn, run_id)
    if run.status not in ("queued", "running"):
        return effects
    await finish_run(
        conn,
        run,
        "failed",
        effects,
        topology,
        {"error": {"code": code, "message": message}},
        error_code=code,
        error_message=message,
    )
    return effects
