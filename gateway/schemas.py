"""REST request and response bodies, and their conversion from protobuf messages.

Empty proto strings and unset timestamps become ``null``; timestamps are
RFC 3339 in UTC with a ``Z`` suffix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, TypeVar
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from bulkhead.proto.chat.v1 import chat_service_pb2, types_pb2
from bulkhead.text import find_unstorable

MAX_MODEL_NAME_CHARS = 200
_T = TypeVar("_T")

Role = Literal["user", "assistant", "system"]
MessageStatus = Literal["streaming", "completed", "failed", "cancelled"]
RunStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
OnBusy = Literal["enqueue", "reject", "interrupt"]

_ROLE_NAMES: dict[int, Role] = {
    types_pb2.MESSAGE_ROLE_USER: "user",
    types_pb2.MESSAGE_ROLE_ASSISTANT: "assistant",
    types_pb2.MESSAGE_ROLE_SYSTEM: "system",
}
_MESSAGE_STATUS_NAMES: dict[int, MessageStatus] = {
    types_pb2.MESSAGE_STATUS_STREAMING: "streaming",
    types_pb2.MESSAGE_STATUS_COMPLETED: "completed",
    types_pb2.MESSAGE_STATUS_FAILED: "failed",
    types_pb2.MESSAGE_STATUS_CANCELLED: "cancelled",
}
_RUN_STATUS_NAMES: dict[int, RunStatus] = {
    types_pb2.RUN_STATUS_QUEUED: "queued",
    types_pb2.RUN_STATUS_RUNNING: "running",
    types_pb2.RUN_STATUS_COMPLETED: "completed",
    types_pb2.RUN_STATUS_FAILED: "failed",
    types_pb2.RUN_STATUS_CANCELLED: "cancelled",
}
ON_BUSY_VALUES: dict[OnBusy, chat_service_pb2.OnBusy.ValueType] = {
    "enqueue": chat_service_pb2.ON_BUSY_ENQUEUE,
    "reject": chat_service_pb2.ON_BUSY_REJECT,
    "interrupt": chat_service_pb2.ON_BUSY_INTERRUPT,
}
TERMINAL_RUN_STATUSES: frozenset[RunStatus] = frozenset(
    {"completed", "failed", "cancelled"}
)


class ProtoConversionError(ValueError):
    """A message from chat_service has a value the REST API cannot express."""


class PostMessageRequest(BaseModel):
    """Body of ``POST /api/chat``."""

    model_config = ConfigDict(extra="forbid")

    content: StrictStr = Field(
        description=(
            "The user message: not blank, without NUL or lone surrogates, at most "
            "BULKHEAD_MAX_CONTENT_CHARS characters (32,000 by default)."
        )
    )
    chat_id: UUID | None = Field(
        default=None, description="Chat to post to; null starts a new chat."
    )
    model: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODEL_NAME_CHARS,
        description="Model route; null for the configured default.",
    )
    on_busy: OnBusy = Field(
        default="enqueue",
        description=(
            "When the chat has an active run: queue behind it, reject with 409, "
            "or cancel it and run this message."
        ),
    )

    @field_validator("content")
    @classmethod
    def _check_content(cls, content: str) -> str:
        if not content.strip():
            raise ValueError("must not be empty or blank")
        _reject_unstorable(content)
        return content

    @field_validator("model")
    @classmethod
    def _check_model(cls, model: str | None) -> str | None:
        if model is not None:
            if not model.strip():
                raise ValueError("must not be blank; send null for the default model")
            _reject_unstorable(model)
        return model


class Message(BaseModel):
    """A message of a chat."""

    id: str
    chat_id: str
    role: Role
    content: str
    status: MessageStatus
    run_id: str | None = Field(
        description="Run that wrote this assistant message, or that replies to this "
        "user message (the latest one)."
    )
    created_at: datetime | None
    updated_at: datetime | None


class AssistantMessage(BaseModel):
    """The assistant message a run writes."""

    id: str
    content: str
    status: MessageStatus


class RunError(BaseModel):
    """The reason a run failed."""

    code: str = Field(description="Machine-readable code, such as lease_expired.")
    message: str


class Usage(BaseModel):
    """Token counts reported by the model provider."""

    prompt_tokens: int
    completion_tokens: int


class Attempt(BaseModel):
    """One call to one model; every retry and fallback step is its own attempt."""

    number: int
    model: str | None
    provider: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: str | None = Field(description="completed, failed or cancelled.")
    error_class: str | None
    error_message: str | None
    usage: Usage | None


class Run(BaseModel):
    """The asynchronous work that replies to one user message."""

    id: str
    chat_id: str
    user_message_id: str
    status: RunStatus
    model: str | None = Field(description="Requested model route, or the default.")
    model_used: str | None = Field(
        description="Model that wrote the assistant message."
    )
    error: RunError | None
    assistant_message: AssistantMessage | None
    attempts: list[Attempt]
    usage: Usage | None
    last_event_id: int = Field(
        description="Sequence number of the run's latest event; 0 when none. "
        "Send it as Last-Event-ID to resume the event stream after it."
    )
    created_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None


class Chat(BaseModel):
    """A conversation."""

    id: str
    title: str | None
    created_at: datetime | None
    updated_at: datetime | None


class PostMessageResponse(BaseModel):
    """Response of ``POST /api/chat``: the stored message and its run."""

    chat_id: str
    message: Message
    run: Run


class ChatPage(BaseModel):
    """One page of the caller's chats, newest first."""

    items: list[Chat]
    next_cursor: str | None = Field(description="Cursor of the next page, or null.")


class MessagePage(BaseModel):
    """One page of a chat's messages."""

    items: list[Message]
    next_cursor: str | None = Field(description="Cursor of the next page, or null.")


def message_from_proto(message: types_pb2.Message) -> Message:
    return Message(
        id=message.id,
        chat_id=message.chat_id,
        role=_enum_name(_ROLE_NAMES, message.role, "message role"),
        content=message.content,
        status=_enum_name(_MESSAGE_STATUS_NAMES, message.status, "message status"),
        run_id=message.run_id or None,
        created_at=_datetime(message, "created_at"),
        updated_at=_datetime(message, "updated_at"),
    )


def run_from_proto(run: types_pb2.Run) -> Run:
    return Run(
        id=run.id,
        chat_id=run.chat_id,
        user_message_id=run.user_message_id,
        status=_enum_name(_RUN_STATUS_NAMES, run.status, "run status"),
        model=run.model or None,
        model_used=run.model_used or None,
        error=_run_error(run),
        assistant_message=_assistant_message(run),
        attempts=[_attempt(call) for call in run.model_calls],
        usage=_usage(run, "usage"),
        last_event_id=run.last_event_seq,
        created_at=_datetime(run, "created_at"),
        updated_at=_datetime(run, "updated_at"),
        finished_at=_datetime(run, "finished_at"),
    )


def chat_from_proto(chat: types_pb2.Chat) -> Chat:
    return Chat(
        id=chat.id,
        title=chat.title or None,
        created_at=_datetime(chat, "created_at"),
        updated_at=_datetime(chat, "updated_at"),
    )


def post_message_response_from_proto(
    response: chat_service_pb2.PostMessageResponse,
) -> PostMessageResponse:
    return PostMessageResponse(
        chat_id=response.chat_id,
        message=message_from_proto(response.message),
        run=run_from_proto(response.run),
    )


def _run_error(run: types_pb2.Run) -> RunError | None:
    if not run.HasField("error") or not (run.error.code or run.error.message):
        return None
    return RunError(code=run.error.code, message=run.error.message)


def _assistant_message(run: types_pb2.Run) -> AssistantMessage | None:
    if not run.HasField("assistant_message") or not run.assistant_message.id:
        return None
    message = run.assistant_message
    return AssistantMessage(
        id=message.id,
        content=message.content,
        status=_enum_name(_MESSAGE_STATUS_NAMES, message.status, "message status"),
    )


def _attempt(call: types_pb2.ModelCall) -> Attempt:
    return Attempt(
        number=call.number,
        model=call.model or None,
        provider=call.provider or None,
        started_at=_datetime(call, "started_at"),
        ended_at=_datetime(call, "ended_at"),
        outcome=call.outcome or None,
        error_class=call.error_class or None,
        error_message=call.error_message or None,
        usage=_usage(call, "usage"),
    )


def _usage(message: types_pb2.Run | types_pb2.ModelCall, field: str) -> Usage | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    usage: types_pb2.Usage = getattr(message, field)
    return Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
    )


def _datetime(
    message: types_pb2.Message | types_pb2.Run | types_pb2.Chat | types_pb2.ModelCall,
    field: str,
) -> datetime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _enum_name(names: dict[int, _T], value: int, what: str) -> _T:
    try:
        return names[value]
    except KeyError:
        raise ProtoConversionError(f"unexpected {what} {value}") from None


def _reject_unstorable(text: str) -> None:
    index = find_unstorable(text)
    if index is not None:
        raise ValueError(
            f"contains a NUL character or a lone surrogate at index {index}"
        )
