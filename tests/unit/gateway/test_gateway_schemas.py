"""Request validation and conversion of protobuf messages to REST bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from bulkhead.proto.chat.v1 import chat_service_pb2, types_pb2
from gateway.schemas import (
    PostMessageRequest,
    ProtoConversionError,
    chat_from_proto,
    message_from_proto,
    post_message_response_from_proto,
    run_from_proto,
)

CREATED = datetime(2025, 3, 1, 12, 30, 5, 250000, tzinfo=UTC)
FINISHED = datetime(2025, 3, 1, 12, 30, 9, tzinfo=UTC)


def stamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


def completed_run() -> types_pb2.Run:
    return types_pb2.Run(
        id="run-1",
        chat_id="chat-1",
        user_message_id="msg-1",
        status=types_pb2.RUN_STATUS_COMPLETED,
        model="default",
        model_used="echo",
        assistant_message=types_pb2.Message(
            id="msg-2", content="Hi there", status=types_pb2.MESSAGE_STATUS_COMPLETED
        ),
        created_at=stamp(CREATED),
        updated_at=stamp(FINISHED),
        finished_at=stamp(FINISHED),
        attempt=2,
        model_calls=[
            types_pb2.ModelCall(
                number=1,
                model="big",
                provider="openai",
                started_at=stamp(CREATED),
                ended_at=stamp(CREATED),
                outcome="failed",
                error_class="RateLimitError",
                error_message="429 from provider",
            ),
            types_pb2.ModelCall(
                number=2,
                model="echo",
                provider="builtin",
                started_at=stamp(CREATED),
                ended_at=stamp(FINISHED),
                outcome="completed",
                usage=types_pb2.Usage(prompt_tokens=10, completion_tokens=3),
            ),
        ],
        usage=types_pb2.Usage(prompt_tokens=10, completion_tokens=3),
        last_event_seq=7,
    )


def test_run_from_proto_completed_run() -> None:
    body = run_from_proto(completed_run()).model_dump(mode="json")

    assert body["status"] == "completed"
    assert body["model_used"] == "echo"
    assert body["assistant_message"] == {
        "id": "msg-2",
        "content": "Hi there",
        "status": "completed",
    }
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3}
    assert body["last_event_id"] == 7
    assert body["error"] is None
    assert body["finished_at"] == "2025-03-01T12:30:09Z"
    assert body["created_at"] == "2025-03-01T12:30:05.250000Z"


def test_run_from_proto_attempts() -> None:
    attempts = run_from_proto(completed_run()).model_dump(mode="json")["attempts"]

    assert [a["number"] for a in attempts] == [1, 2]
    assert attempts[0]["outcome"] == "failed"
    assert attempts[0]["error_class"] == "RateLimitError"
    assert attempts[0]["usage"] is None
    assert attempts[1]["error_class"] is None
    assert attempts[1]["error_message"] is None
    assert attempts[1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 3}
    assert set(attempts[0]) == {
        "number",
        "model",
        "provider",
        "started_at",
        "ended_at",
        "outcome",
        "error_class",
        "error_message",
        "usage",
    }


def test_run_from_proto_queued_run_has_nulls() -> None:
    run = types_pb2.Run(
        id="run-1",
        chat_id="chat-1",
        user_message_id="msg-1",
        status=types_pb2.RUN_STATUS_QUEUED,
        created_at=stamp(CREATED),
    )

    body = run_from_proto(run).model_dump(mode="json")

    assert body["model"] is None
    assert body["model_used"] is None
    assert body["error"] is None
    assert body["assistant_message"] is None
    assert body["usage"] is None
    assert body["attempts"] == []
    assert body["last_event_id"] == 0
    assert body["updated_at"] is None
    assert body["finished_at"] is None


def test_run_from_proto_failed_run_error() -> None:
    run = types_pb2.Run(
        id="run-1",
        status=types_pb2.RUN_STATUS_FAILED,
        error=types_pb2.RunError(code="lease_expired", message="worker lost"),
    )

    body = run_from_proto(run).model_dump(mode="json")

    assert body["status"] == "failed"
    assert body["error"] == {"code": "lease_expired", "message": "worker lost"}


def test_run_from_proto_unspecified_status_rejected() -> None:
    with pytest.raises(ProtoConversionError):
        run_from_proto(types_pb2.Run(id="run-1"))


def test_message_from_proto_fields() -> None:
    message = types_pb2.Message(
        id="msg-1",
        chat_id="chat-1",
        role=types_pb2.MESSAGE_ROLE_USER,
        content="Hello",
        status=types_pb2.MESSAGE_STATUS_COMPLETED,
        run_id="run-1",
        seq=1,
        created_at=stamp(CREATED),
        updated_at=stamp(CREATED),
    )

    body = message_from_proto(message).model_dump(mode="json")

    assert body == {
        "id": "msg-1",
        "chat_id": "chat-1",
        "role": "user",
        "content": "Hello",
        "status": "completed",
        "run_id": "run-1",
        "created_at": "2025-03-01T12:30:05.250000Z",
        "updated_at": "2025-03-01T12:30:05.250000Z",
    }


def test_message_from_proto_empty_run_id_is_null() -> None:
    message = types_pb2.Message(
        id="msg-1",
        role=types_pb2.MESSAGE_ROLE_ASSISTANT,
        status=types_pb2.MESSAGE_STATUS_STREAMING,
    )

    body = message_from_proto(message).model_dump(mode="json")

    assert body["run_id"] is None
    assert body["role"] == "assistant"
    assert body["status"] == "streaming"


def test_chat_from_proto_empty_title_is_null() -> None:
    chat = types_pb2.Chat(id="chat-1", created_at=stamp(CREATED))

    body = chat_from_proto(chat).model_dump(mode="json")

    assert body == {
        "id": "chat-1",
        "title": None,
        "created_at": "2025-03-01T12:30:05.250000Z",
        "updated_at": None,
    }


def test_post_message_response_from_proto_shape() -> None:
    response = chat_service_pb2.PostMessageResponse(
        chat_id="chat-1",
        message=types_pb2.Message(
            id="msg-1",
            chat_id="chat-1",
            role=types_pb2.MESSAGE_ROLE_USER,
            status=types_pb2.MESSAGE_STATUS_COMPLETED,
        ),
        run=types_pb2.Run(id="run-1", status=types_pb2.RUN_STATUS_QUEUED),
        replayed=True,
    )

    body = post_message_response_from_proto(response).model_dump(mode="json")

    assert set(body) == {"chat_id", "message", "run"}
    assert body["run"]["status"] == "queued"


def test_post_message_request_defaults() -> None:
    request = PostMessageRequest.model_validate({"content": "Hello"})

    assert request.chat_id is None
    assert request.model is None
    assert request.on_busy == "enqueue"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": " \n\t"}, "content"),
        ({"content": 5}, "content"),
        ({"content": ["a"]}, "content"),
        ({"content": "a\x00b"}, "content"),
        ({"content": "a\ud800b"}, "content"),
        ({"content": "a", "extra": 1}, "extra"),
        ({"content": "a", "chat_id": "not-a-uuid"}, "chat_id"),
        ({"content": "a", "chat_id": 12}, "chat_id"),
        ({"content": "a", "model": 5}, "model"),
        ({"content": "a", "model": ""}, "model"),
        ({"content": "a", "model": "   "}, "model"),
        ({"content": "a", "model": "m" * 201}, "model"),
        ({"content": "a", "on_busy": "queue"}, "on_busy"),
        ({}, "content"),
    ],
)
def test_post_message_request_rejects(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        PostMessageRequest.model_validate(body)

    assert raised.value.errors()[0]["loc"][0] == field


def test_post_message_request_accepts_limits() -> None:
    request = PostMessageRequest.model_validate(
        {
            "content": "é 👋",
            "chat_id": "0b6f0c1e-9f0a-4d8e-8d43-2bb7c8a9a001",
            "model": "m" * 200,
            "on_busy": "interrupt",
        }
    )

    assert str(request.chat_id) == "0b6f0c1e-9f0a-4d8e-8d43-2bb7c8a9a001"
    assert request.on_busy == "interrupt"
