"""The run state machine as seen by workers: claim, report, finish.

Every claim increments the run's ``attempt``, which is the fencing token: a
report must carry the current attempt or it fails with STALE_ATTEMPT and
changes nothing. All transitions lock the run row first (PostgreSQL
``FOR UPDATE``; SQLite serializes write transactions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from google.protobuf.message import DecodeError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.messaging import Topology
from bulkhead.proto.chat.v1 import run_service_pb2, types_pb2
from bulkhead.rpc import from_timestamp, to_timestamp
from bulkhead.text import sanitize
from chat_service.convert import MESSAGE_ROLE
from chat_service.errors import (
    InvalidArgumentError,
    RunFinishedError,
    StaleAttemptError,
)
from chat_service.events import AfterCommit, append_events
from chat_service.lifecycle import finish_run
from chat_service.outbox import enqueue_task
from chat_service.store.database import as_utc, utcnow
from chat_service.store.deferred import defer_insert, defer_update
from chat_service.store.ids import uuid7
from chat_service.store.queries import (
    TERMINAL_STATUSES,
    get_run_row,
    lock_run_and_chat,
    update_run,
)
from chat_service.store.tables import messages, model_calls

STAGE_NAMES = {
    run_service_pb2.STAGE_AGENT: "agent",
    run_service_pb2.STAGE_EXECUTOR: "executor",
}
MAX_ERROR_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class RunPolicy:
    lease_s: float
    max_attempts: int


@dataclass
class Outcome:
    """A transition's response plus what to do after commit."""

    response: Any
    effects: AfterCommit = field(default_factory=AfterCommit)


def _check_attempt(run: Any, attempt: int) -> None:
    if run.status in TERMINAL_STATUSES:
        raise RunFinishedError(f"run is {run.status}", status=run.status)
    if run.attempt != attempt:
        raise StaleAttemptError(
            f"attempt {attempt} is not the current attempt {run.attempt}",
            current_attempt=str(run.attempt),
        )


async def claim(
    conn: AsyncConnection,
    request: run_service_pb2.ClaimRunRequest,
    policy: RunPolicy,
    topology: Topology,
) -> Outcome:
    stage = STAGE_NAMES.get(request.stage)
    if stage is None:
        raise InvalidArgumentError("stage", "must be STAGE_AGENT or STAGE_EXECUTOR")
    run = await get_run_row(conn, _run_id(request.run_id), lock=True)
    response = run_service_pb2.ClaimRunResponse(
        chat_id=str(run.chat_id), user_id=run.user_id
    )
    if run.status in TERMINAL_STATUSES:
        response.outcome = run_service_pb2.CLAIM_OUTCOME_FINISHED
        return Outcome(response)
    if run.stage != stage or not run.dispatched:
        response.outcome = run_service_pb2.CLAIM_OUTCOME_WRONG_STAGE
        return Outcome(response)
    now = utcnow()
    lease = as_utc(run.lease_expires_at)
    if lease is not None and lease > now and run.worker_id != request.worker_id:
        response.outcome = run_service_pb2.CLAIM_OUTCOME_LEASED
        response.lease_expires_at.CopyFrom(to_timestamp(lease))
        return Outcome(response)

    effects = AfterCommit()
    if run.attempt >= policy.max_attempts:
        await finish_run(
            conn,
            run,
            "failed",
            effects,
            topology,
            {"error": {"code": "lease_expired", "message": _exhausted_message(run)}},
            error_code="lease_expired",
            error_message=_exhausted_message(run),
        )
        response.outcome = run_service_pb2.CLAIM_OUTCOME_FINISHED
        return Outcome(response, effects)

    attempt = run.attempt + 1
    lease_expires_at = now + timedelta(seconds=policy.lease_s)
    values: dict[str, Any] = {
        "attempt": attempt,
        "worker_id": request.worker_id,
        "lease_expires_at": lease_expires_at,
        "status": "running",
        "output_batch": 0,
        "updated_at": now,
    }
    if stage == "executor" and run.assistant_message_id is None:
        values["assistant_message_id"] = await _create_assistant_message(conn, run)
    if run.status == "queued":
        stored = await append_events(
            conn,
            run.id,
            run.event_seq,
            [("run.status", {"status": "running"})],
            advance_counter=False,
        )
        values["event_seq"] = stored[-1].seq
        effects.add_events(run.id, stored)
    await update_run(conn, run.id, values)

    response.outcome = run_service_pb2.CLAIM_OUTCOME_CLAIMED
    response.attempt = attempt
    response.lease_expires_at.CopyFrom(to_timestamp(lease_expires_at))
    response.model = run.model
    if stage == "agent":
        response.history.extend(await _history(conn, run))
    else:
        if run.plan is not None:
            response.plan.ParseFromString(run.plan)
        response.has_output = run.has_output
    return Outcome(response, effects)


async def submit_plan(
    conn: AsyncConnection,
    request: run_service_pb2.SubmitPlanRequest,
    topology: Topology,
) -> Outcome:
    run = await get_run_row(conn, _run_id(request.run_id), lock=True)
    _check_attempt(run, request.attempt)
    if run.stage != "agent":
        raise StaleAttemptError("the run's plan was already submitted")
    if not request.plan.model_chain:
        raise InvalidArgumentError("plan.model_chain", "must name at least one model")
    now = utcnow()
    await update_run(
        conn,
        run.id,
        {
            "plan": request.plan.SerializeToString(),
            "stage": "executor",
            "lease_expires_at": None,
            "worker_id": None,
            "dispatched_at": now,
            "updated_at": now,
        },
    )
    await enqueue_task(
        conn, topology, run.id, "executor", model=request.plan.model_chain[0]
    )
    effects = AfterCommit(outbox_rows=1)
    return Outcome(run_service_pb2.SubmitPlanResponse(), effects)


async def append_output(
    conn: AsyncConnection,
    request: run_service_pb2.AppendOutputRequest,
    policy: RunPolicy,
) -> Outcome:
    run = await get_run_row(conn, _run_id(request.run_id), lock=True)
    if run.status == "cancelled":
        return Outcome(
            run_service_pb2.AppendOutputResponse(
                cancel_requested=True, last_event_seq=run.event_seq
            )
        )
    _check_attempt(run, request.attempt)
    if request.batch <= run.output_batch:
        return Outcome(
            run_service_pb2.AppendOutputResponse(last_event_seq=run.event_seq)
        )

    now = utcnow()
    stored, values = await _store_output(conn, run, request.batch, request.events)
    values["lease_expires_at"] = now + timedelta(seconds=policy.lease_s)
    values["updated_at"] = now
    await update_run(conn, run.id, values)
    effects = AfterCommit()
    effects.add_events(run.id, stored)
    return Outcome(
        run_service_pb2.AppendOutputResponse(last_event_seq=values["event_seq"]),
        effects,
    )


async def _store_output(
    conn: AsyncConnection, run: Any, batch: int, events: Any
) -> tuple[list[types_pb2.RunEvent], dict[str, Any]]:
    """Store one output batch of a locked run: message text, failed calls and
    events. Returns the stored events and the run columns to update."""
    translated, content_ops, failed_calls = _translate_output(events)
    await _apply_content(conn, run.assistant_message_id, content_ops, utcnow())
    if failed_calls:
        await _insert_calls(conn, run.id, failed_calls)
    stored = await append_events(
        conn, run.id, run.event_seq, translated, advance_counter=False
    )
    values: dict[str, Any] = {
        "event_seq": stored[-1].seq if stored else run.event_seq,
        "output_batch": batch,
        "has_output": _has_output(run.has_output, content_ops),
    }
    return stored, values


async def _store_final_output(
    conn: AsyncConnection, run: Any, batch: int, events: Any, effects: AfterCommit
) -> tuple[Any, dict[str, Any]]:
    """Store the output sent with CompleteRun or FailRun, unless that batch was
    already stored. Returns the run as the finish must see it and the output
    columns to update with it."""
    if not events or batch <= run.output_batch:
        return run, {}
    stored, values = await _store_output(conn, run, batch, events)
    effects.add_events(run.id, stored)
    run = _RunView(run, event_seq=values.pop("event_seq"))
    return run, values


class _RunView:
    """A run row with some columns replaced, for transitions that store
    several steps in one transaction."""

    def __init__(self, row: Any, **changes: Any) -> None:
        self._row = row
        self._changes = changes

    def __getattr__(self, name: str) -> Any:
        if name in self._changes:
            return self._changes[name]
        return getattr(self._row, name)


async def renew_lease(
    conn: AsyncConnection, request: run_service_pb2.RenewLeaseRequest, policy: RunPolicy
) -> Outcome:
    run = await get_run_row(conn, _run_id(request.run_id), lock=True)
    if run.status == "cancelled":
        return Outcome(run_service_pb2.RenewLeaseResponse(cancel_requested=True))
    _check_attempt(run, request.attempt)
    now = utcnow()
    expires = now + timedelta(seconds=policy.lease_s)
    await update_run(conn, run.id, {"lease_expires_at": expires, "updated_at": now})
    return Outcome(
        run_service_pb2.RenewLeaseResponse(lease_expires_at=to_timestamp(expires))
    )


async def complete(
    conn: AsyncConnection,
    request: run_service_pb2.CompleteRunRequest,
    topology: Topology,
) -> Outcome:
    run = await lock_run_and_chat(conn, _run_id(request.run_id))
    if run.status == "completed" and run.attempt == request.attempt:
        return Outcome(run_service_pb2.CompleteRunResponse())  # a retried report
    _check_attempt(run, request.attempt)
    if run.stage != "executor":
        raise StaleAttemptError("only the executor stage completes a run")
    effects = AfterCommit()
    run, output_values = await _store_final_output(
        conn, run, request.final_batch, request.final_output, effects
    )
    await _insert_calls(conn, run.id, request.model_calls)
    usage = request.usage if request.HasField("usage") else None
    data: dict[str, Any] = {
        "model_used": request.model_used,
        "message_id": str(run.assistant_message_id)
        if run.assistant_message_id
        else None,
    }
    if usage is not None:
        data["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        }
    await finish_run(
        conn,
        run,
        "completed",
        effects,
        topology,
        data,
        model_used=request.model_used or None,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        **output_values,
    )
    return Outcome(run_service_pb2.CompleteRunResponse(), effects)


async def fail(
    conn: AsyncConnection, request: run_service_pb2.FailRunRequest, topology: Topology
) -> Outcome:
    run = await lock_run_and_chat(conn, _run_id(request.run_id))
    if run.status == "failed" and run.attempt == request.attempt:
        return Outcome(run_service_pb2.FailRunResponse())
    _check_attempt(run, request.attempt)
    code = request.error.code or "failed"
    message = sanitize(request.error.message)[:MAX_ERROR_MESSAGE_CHARS]
    effects = AfterCommit()
    run, output_values = await _store_final_output(
        conn, run, request.final_batch, request.final_output, effects
    )
    await _insert_calls(conn, run.id, request.model_calls)
    await finish_run(
        conn,
        run,
        "failed",
        effects,
        topology,
        {"error": {"code": code, "message": message}},
        error_code=code[:64],
        error_message=message,
        **output_values,
    )
    return Outcome(run_service_pb2.FailRunResponse(), effects)


async def release(
    conn: AsyncConnection, request: run_service_pb2.ReleaseRunRequest
) -> Outcome:
    run = await get_run_row(conn, _run_id(request.run_id), lock=True)
    _check_attempt(run, request.attempt)
    await update_run(
        conn,
        run.id,
        {"lease_expires_at": None, "worker_id": None, "updated_at": utcnow()},
    )
    return Outcome(run_service_pb2.ReleaseRunResponse())


def first_model(plan: bytes | None) -> str:
    """Return the first route of a stored plan, or "" when there is none."""
    if not plan:
        return ""
    try:
        chain = run_service_pb2.Plan.FromString(plan).model_chain
    except DecodeError:
        return ""
    return chain[0] if chain else ""


def _run_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgumentError("run_id", "must be a UUID") from None


def _exhausted_message(run: Any) -> str:
    return f"the run was claimed {run.attempt} times without finishing"


async def _create_assistant_message(conn: AsyncConnection, run: Any) -> UUID:
    now = utcnow()
    message_id = uuid7()
    row = {
        "id": message_id,
        "chat_id": run.chat_id,
        "seq": run.user_message_seq + 1,
        "role": "assistant",
        "content": "",
        "status": "streaming",
        "run_id": run.id,
        "created_at": now,
        "updated_at": now,
    }
    await defer_insert(conn, messages, [row])
    return message_id


# Characters of conversation sent with a claim, newest messages first: at
# most 4 bytes each in UTF-8, so a claim stays under 1 MiB of text, far below
# the gRPC message limit however long the chat grows. Agents cut the context
# to their own, smaller budget (BULKHEAD_AGENT_CONTEXT_BUDGET_CHARS).
MAX_HISTORY_CHARS = 256_000


async def _history(
    conn: AsyncConnection, run: Any
) -> list[run_service_pb2.ContextMessage]:
    """The chat's user messages and completed assistant messages up to the run's message."""
    rows = (
        await conn.execute(
            select(
                messages.c.role, messages.c.content, messages.c.status, messages.c.id
            )
            .where(
                messages.c.chat_id == run.chat_id,
                messages.c.seq <= run.user_message_seq,
            )
            .order_by(messages.c.seq, messages.c.created_at)
        )
    ).all()
    history = []
    total_chars = 0
    # Newest first, so that the cap drops the oldest messages.
    for row in reversed(rows):
        if row.role == "assistant" and row.status != "completed":
            continue
        total_chars += len(row.content)
        if history and total_chars > MAX_HISTORY_CHARS:
            break
        history.append(
            run_service_pb2.ContextMessage(
                role=MESSAGE_ROLE[row.role], content=row.content
            )
        )
    history.reverse()
    return history


def _translate_output(
    events: Any,
) -> tuple[
    list[tuple[str, dict[str, Any]]], list[tuple[str, str]], list[types_pb2.ModelCall]
]:
    """Turn reported output into events (consecutive deltas coalesced), content
    operations on the assistant message, and failed model calls."""
    stored: list[tuple[str, dict[str, Any]]] = []
    content_ops: list[tuple[str, str]] = []
    failed_calls: list[types_pb2.ModelCall] = []
    for event in events:
        kind = event.WhichOneof("kind")
        if kind == "delta":
            text = sanitize(event.delta.text)
            if not text:
                continue
            if stored and stored[-1][0] == "message.delta":
                stored[-1][1]["delta"] += text
                content_ops[-1] = ("append", content_ops[-1][1] + text)
            else:
                stored.append(("message.delta", {"delta": text}))
                content_ops.append(("append", text))
        elif kind == "reset":
            stored.append(("message.reset", {"reason": event.reset.reason or "retry"}))
            content_ops.append(("reset", ""))
        elif kind == "attempt_failed":
            call = event.attempt_failed
            failed_calls.append(call)
            stored.append(("attempt.failed", _call_data(call)))
        elif kind == "model_fallback":
            fallback = event.model_fallback
            stored.append(
                (
                    "model.fallback",
                    {
                        "from_model": fallback.from_model,
                        "to_model": fallback.to_model,
                        "reason": sanitize(fallback.reason),
                    },
                )
            )
    return stored, content_ops, failed_calls


def _has_output(had_output: bool, ops: list[tuple[str, str]]) -> bool:
    """Whether the assistant message contains text after applying ``ops``."""
    if any(kind == "reset" for kind, _ in ops):
        return any(text for _, text in _after_last_reset(ops))
    return had_output or any(text for _, text in ops)


def _after_last_reset(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (kind, _) in enumerate(ops) if kind == "reset")
    return ops[last + 1 :]


async def _apply_content(
    conn: AsyncConnection, message_id: UUID | None, ops: list[tuple[str, str]], now: Any
) -> None:
    if message_id is None or not ops:
        return
    # Fold the operations into at most one UPDATE: a reset discards what came before.
    reset = any(kind == "reset" for kind, _ in ops)
    tail = _after_last_reset(ops) if reset else ops
    text = "".join(value for _, value in tail)
    if not reset and not text:
        return
    await defer_update(
        conn,
        messages,
        ("id", message_id),
        {"content": text, "updated_at": now},
        append=() if reset else ("content",),
    )


async def _insert_calls(conn: AsyncConnection, run_id: UUID, calls: Any) -> None:
    """Store model calls, skipping those already stored for the run.

    A failed call arrives twice: as an ``attempt_failed`` output event while
    the chain goes on, and again in the final CompleteRun or FailRun report,
    which lists every call of the attempt. (attempt, number) identifies a call.
    """
    calls = list(calls)
    if any(call.outcome != "completed" for call in calls):
        # Only failed calls can have been stored before; a report of
        # successful calls alone skips this query.
        stored = {
            (row.attempt, row.number)
            for row in await conn.execute(
                select(model_calls.c.attempt, model_calls.c.number).where(
                    model_calls.c.run_id == run_id
                )
            )
        }
        calls = [c for c in calls if (c.attempt, c.number) not in stored]
    rows = [
        {
            "run_id": run_id,
            "attempt": call.attempt,
            "number": call.number,
            "model": call.model[:200],
            "provider": call.provider[:64],
            "started_at": from_timestamp(call.started_at)
            if call.HasField("started_at")
            else None,
            "ended_at": from_timestamp(call.ended_at)
            if call.HasField("ended_at")
            else None,
            "outcome": call.outcome[:16] or "failed",
            "error_class": sanitize(call.error_class)[:100] or None,
            "error_message": sanitize(call.error_message)[:MAX_ERROR_MESSAGE_CHARS]
            or None,
            "prompt_tokens": call.usage.prompt_tokens
            if call.HasField("usage")
            else None,
            "completion_tokens": call.usage.completion_tokens
            if call.HasField("usage")
            else None,
        }
        for call in calls
    ]
    await defer_insert(conn, model_calls, rows)


def _call_data(call: types_pb2.ModelCall) -> dict[str, Any]:
    return {
        "attempt": call.attempt,
        "number": call.number,
        "model": call.model,
        "provider": call.provider,
        "error_class": sanitize(call.error_class),
        "error_message": sanitize(call.error_message)[:MAX_ERROR_MESSAGE_CHARS],
    }
