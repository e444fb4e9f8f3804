"""PostMessage: the synchronous path of an accepted message.

One transaction stores, in this order: the idempotency key, the chat (new or
locked), the user message, the run and, when the chat has no run in flight,
the outbox row that schedules the agent. Nothing about AI work happens here.

A message that starts a chat and carries no idempotency key reads nothing
before it writes, so on PostgreSQL it is part of a statement that commits by
itself, rate limit included, shared with the other such messages in flight
(see ``store.first_messages``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.messaging import Topology
from bulkhead.models import ModelCatalog
from bulkhead.proto.chat.v1 import chat_service_pb2
from bulkhead.text import IDEMPOTENCY_KEY_PATTERN, find_unstorable, shorten
from chat_service import idempotency, rate_limits
from chat_service.convert import message_to_proto, run_to_proto
from chat_service.errors import ChatBusyError, InvalidArgumentError, NotFoundError
from chat_service.events import AfterCommit
from chat_service.lifecycle import dispatch_next, finish_run
from chat_service.outbox import outbox_row
from chat_service.store.database import Database, retry_on_conflict, utcnow
from chat_service.store.first_messages import (
    FirstMessage,
    FirstMessageWriter,
    RateLimit,
)
from chat_service.store.ids import uuid7
from chat_service.store.post_rows import insert_post_rows
from chat_service.store.queries import ACTIVE_STATUSES, parse_uuid
from chat_service.store.tables import chats, runs

TITLE_LENGTH = 80
_ON_BUSY_POLICIES = frozenset(
    {
        chat_service_pb2.ON_BUSY_UNSPECIFIED,
        chat_service_pb2.ON_BUSY_ENQUEUE,
        chat_service_pb2.ON_BUSY_REJECT,
        chat_service_pb2.ON_BUSY_INTERRUPT,
    }
)


@dataclass(frozen=True)
class PostLimits:
    max_content_chars: int
    idempotency_ttl_s: float
    max_messages_per_minute: int = 0


def validate_request(
    request: chat_service_pb2.PostMessageRequest,
    catalog: ModelCatalog,
    limits: PostLimits,
) -> str:
    """Check the request; return the model route to use. Raises InvalidArgumentError."""
    content = request.content
    if not content.strip():
        raise InvalidArgumentError("content", "must not be empty or blank")
    if len(content) > limits.max_content_chars:
        raise InvalidArgumentError(
            "content", f"must be at most {limits.max_content_chars} characters"
        )
    position = find_unstorable(content)
    if position is not None:
        raise InvalidArgumentError(
            "content", f"contains a NUL character or lone surrogate at index {position}"
        )
    key = request.idempotency_key
    if key and not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise InvalidArgumentError(
            "idempotency_key",
            "must be 1 to 255 printable ASCII characters, with no space at the "
            "start or end",
        )
    if request.on_busy not in _ON_BUSY_POLICIES:
        raise InvalidArgumentError(
            "on_busy",
            f"must be ON_BUSY_ENQUEUE, ON_BUSY_REJECT or ON_BUSY_INTERRUPT; "
            f"{request.on_busy} is not one",
        )
    try:
        return catalog.resolve(request.model or None)
    except KeyError:
        raise InvalidArgumentError(
            "model", f"must name a configured model route; {request.model!r} is not one"
        ) from None


async def post_message(
    db: Database,
    topology: Topology,
    catalog: ModelCatalog,
    limits: PostLimits,
    user_id: str,
    request: chat_service_pb2.PostMessageRequest,
    *,
    first_messages: FirstMessageWriter,
) -> tuple[chat_service_pb2.PostMessageResponse, AfterCommit]:
    """Store a user message and its run; return the response and post-commit work.

    ``first_messages`` writes the messages that start chats on PostgreSQL.
    """
    model = validate_request(request, catalog, limits)
    chat_id = parse_uuid(request.chat_id, "chat") if request.chat_id else None
    fingerprint = ""
    if request.idempotency_key:
        # The fingerprint uses canonical forms, so a chat id in any letter
        # case is the same request, and an unset policy equals enqueue.
        fingerprint = idempotency.fingerprint(
            request.content,
            str(chat_id) if chat_id else "",
            request.model,
            request.on_busy or chat_service_pb2.ON_BUSY_ENQUEUE,
        )

    async def attempt() -> tuple[chat_service_pb2.PostMessageResponse, AfterCommit]:
        if chat_id is None and not request.idempotency_key and not db.is_sqlite:
            return await _store_first_message(
                first_messages, topology, limits, user_id, request, model
            )
        return await _store(
            db, topology, limits, user_id, request, chat_id, model, fingerprint
        )

    return await retry_on_conflict(attempt)


async def _store(
    db: Database,
    topology: Topology,
    limits: PostLimits,
    user_id: str,
    request: chat_service_pb2.PostMessageRequest,
    chat_id: UUID | None,
    model: str,
    fingerprint: str,
) -> tuple[chat_service_pb2.PostMessageResponse, AfterCommit]:
    """Run PostMessage's transaction once."""
    key = request.idempotency_key
    effects = AfterCommit()
    async with db.transaction() as conn:
        if key:
            claim = await idempotency.claim_key(
                conn, user_id, key, fingerprint, limits.idempotency_ttl_s
            )
            if claim.replay is not None:
                replay = chat_service_pb2.PostMessageResponse.FromString(claim.replay)
                replay.replayed = True
                return replay, AfterCommit()

        # After the replay check, so that a replayed request is not counted.
        await rate_limits.count_message(conn, user_id, limits.max_messages_per_minute)
        if chat_id is None:
            chat_id, seq = uuid.uuid4(), 1
            chat = _new_chat_row(chat_id, user_id, request.content)
            busy = False
        else:
            seq = await _lock_chat(conn, user_id, chat_id)
            chat = None
            busy = await _resolve_busy(
                conn, chat_id, request.on_busy, effects, topology
            )
        message, run = _message_and_run_rows(
            user_id, chat_id, seq, model, request.content, dispatched=not busy
        )
        await insert_post_rows(
            conn,
            chat=chat,
            message=message,
            run=run,
            outbox_row=None if busy else outbox_row(topology, run["id"], "agent"),
        )
        if busy:
            # The new run waits for the chat's active run, whose end dispatches it.
            await dispatch_next(conn, chat_id, effects, topology)
        else:
            effects.outbox_rows += 1
        response = _response(chat_id, message, run)
        if key:
            await idempotency.store_response(
                conn, user_id, key, response.SerializeToString()
            )
    return response, effects


async def _store_first_message(
    first_messages: FirstMessageWriter,
    topology: Topology,
    limits: PostLimits,
    user_id: str,
    request: chat_service_pb2.PostMessageRequest,
    model: str,
) -> tuple[chat_service_pb2.PostMessageResponse, AfterCommit]:
    """Store a message that starts a new chat (PostgreSQL)."""
    chat_id = uuid.uuid4()
    chat = _new_chat_row(chat_id, user_id, request.content)
    message, run = _message_and_run_rows(
        user_id, chat_id, 1, model, request.content, dispatched=True
    )
    limit = limits.max_messages_per_minute
    timestamp = chat["created_at"].timestamp()
    rate = RateLimit(rate_limits.window_of(timestamp), limit) if limit > 0 else None
    item = FirstMessage(
        user_id, chat, message, run, outbox_row(topology, run["id"], "agent")
    )
    if not await first_messages.write(item, rate):
        raise rate_limits.limited_error(limit, timestamp)
    effects = AfterCommit()
    effects.outbox_rows += 1
    return _response(chat_id, message, run), effects


def _response(
    chat_id: UUID, message: dict[str, Any], run: dict[str, Any]
) -> chat_service_pb2.PostMessageResponse:
    return chat_service_pb2.PostMessageResponse(
        chat_id=str(chat_id),
        message=message_to_proto(_Row(message)),
        run=run_to_proto(_Row(run)),
    )


def _new_chat_row(chat_id: UUID, user_id: str, content: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": chat_id,
        "user_id": user_id,
        "title": _title(content),
        "last_seq": 1,
        "created_at": now,
        "updated_at": now,
    }


async def _lock_chat(conn: AsyncConnection, user_id: str, chat_id: UUID) -> int:
    """Lock the user's chat and reserve a message seq; raises NotFoundError."""
    row = (
        await conn.execute(
            update(chats)
            .where(chats.c.id == chat_id, chats.c.user_id == user_id)
            .values(last_seq=chats.c.last_seq + 2, updated_at=utcnow())
            .returning(chats.c.last_seq)
        )
    ).first()
    if row is None:
        raise NotFoundError.for_resource("chat")
    return int(row.last_seq)


async def _resolve_busy(
    conn: AsyncConnection,
    chat_id: UUID,
    on_busy: int,
    effects: AfterCommit,
    topology: Topology,
) -> bool:
    """Apply the on_busy policy; return whether an active run remains, so
    that the new run has to wait for it."""
    active = (
        await conn.execute(
            select(runs)
            .where(runs.c.chat_id == chat_id, runs.c.status.in_(ACTIVE_STATUSES))
            .order_by(runs.c.user_message_seq)
            .with_for_update()
        )
    ).all()
    if not active:
        return False
    if on_busy == chat_service_pb2.ON_BUSY_REJECT:
        raise ChatBusyError("The chat has an active run.", run_id=str(active[0].id))
    if on_busy == chat_service_pb2.ON_BUSY_INTERRUPT:
        for run in active:
            await finish_run(
                conn,
                run,
                "cancelled",
                effects,
                topology,
                {"reason": "interrupted"},
                dispatch=False,
            )
        return False
    return True


def _message_and_run_rows(
    user_id: str,
    chat_id: UUID,
    seq: int,
    model: str,
    content: str,
    dispatched: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every column of the new user message and of its run."""
    now = utcnow()
    message_id, run_id = uuid7(), uuid.uuid4()
    message: dict[str, Any] = {
        "id": message_id,
        "chat_id": chat_id,
        "seq": seq,
        "role": "user",
        "content": content,
        "status": "completed",
        "run_id": run_id,
        "created_at": now,
        "updated_at": now,
    }
    run: dict[str, Any] = {
        "id": run_id,
        "chat_id": chat_id,
        "user_id": user_id,
        "user_message_id": message_id,
        "user_message_seq": seq,
        "assistant_message_id": None,
        "status": "queued",
        "stage": "agent",
        "dispatched": dispatched,
        "dispatched_at": now if dispatched else None,
        "model": model,
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
    return message, run


def _title(content: str) -> str:
    return shorten(" ".join(content.split()), TITLE_LENGTH)


class _Row:
    """Attribute access over a dict of column values, like a result row."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
