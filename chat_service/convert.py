"""Conversion of database rows to protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.rpc import to_timestamp
from chat_service.store.database import as_utc

RUN_STATUS = {
    "queued": types_pb2.RUN_STATUS_QUEUED,
    "running": types_pb2.RUN_STATUS_RUNNING,
    "completed": types_pb2.RUN_STATUS_COMPLETED,
    "failed": types_pb2.RUN_STATUS_FAILED,
    "cancelled": types_pb2.RUN_STATUS_CANCELLED,
}
MESSAGE_STATUS = {
    "streaming": types_pb2.MESSAGE_STATUS_STREAMING,
    "completed": types_pb2.MESSAGE_STATUS_COMPLETED,
    "failed": types_pb2.MESSAGE_STATUS_FAILED,
    "cancelled": types_pb2.MESSAGE_STATUS_CANCELLED,
}
MESSAGE_ROLE = {
    "user": types_pb2.MESSAGE_ROLE_USER,
    "assistant": types_pb2.MESSAGE_ROLE_ASSISTANT,
    "system": types_pb2.MESSAGE_ROLE_SYSTEM,
}
ROLE_NAME = {value: name for name, value in MESSAGE_ROLE.items()}


def chat_to_proto(row: Any) -> types_pb2.Chat:
    return types_pb2.Chat(
        id=str(row.id),
        title=row.title,
        created_at=to_timestamp(as_utc(row.created_at)),
        updated_at=to_timestamp(as_utc(row.updated_at)),
    )


def message_to_proto(row: Any) -> types_pb2.Message:
    return types_pb2.Message(
        id=str(row.id),
        chat_id=str(row.chat_id),
        role=MESSAGE_ROLE[row.role],
        content=row.content,
        status=MESSAGE_STATUS[row.status],
        run_id=str(row.run_id) if row.run_id else "",
        seq=row.seq,
        created_at=to_timestamp(as_utc(row.created_at)),
        updated_at=to_timestamp(as_utc(row.updated_at)),
    )


def model_call_to_proto(row: Any) -> types_pb2.ModelCall:
    call = types_pb2.ModelCall(
        number=row.number,
        model=row.model,
        provider=row.provider,
        outcome=row.outcome,
        error_class=row.error_class or "",
        error_message=row.error_message or "",
        attempt=row.attempt,
        started_at=to_timestamp(as_utc(row.started_at)),
        ended_at=to_timestamp(as_utc(row.ended_at)),
    )
    if row.prompt_tokens is not None or row.completion_tokens is not None:
        call.usage.prompt_tokens = row.prompt_tokens or 0
        call.usage.completion_tokens = row.completion_tokens or 0
    return call


def run_to_proto(
    row: Any,
    assistant: Any | None = None,
    calls: Iterable[Any] = (),
) -> types_pb2.Run:
    run = types_pb2.Run(
        id=str(row.id),
        chat_id=str(row.chat_id),
        user_message_id=str(row.user_message_id),
        status=RUN_STATUS[row.status],
        model=row.model,
        model_used=row.model_used or "",
        created_at=to_timestamp(as_utc(row.created_at)),
        updated_at=to_timestamp(as_utc(row.updated_at)),
        finished_at=to_timestamp(as_utc(row.finished_at)),
        attempt=row.attempt,
        last_event_seq=row.event_seq,
        model_calls=[model_call_to_proto(c) for c in calls],
    )
    if row.error_code:
        run.error.code = row.error_code
        run.error.message = row.error_message or ""
    if row.prompt_tokens is not None or row.completion_tokens is not None:
        run.usage.prompt_tokens = row.prompt_tokens or 0
        run.usage.completion_tokens = row.completion_tokens or 0
    if assistant is not None:
        run.assistant_message.CopyFrom(message_to_proto(assistant))
    return run
