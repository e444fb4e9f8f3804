"""PostMessage called over gRPC checks its request as strictly as the REST API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from bulkhead.devstack import Stack
from bulkhead.proto.chat.v1 import chat_service_pb2 as chat_pb
from bulkhead.proto.chat.v1 import chat_service_pb2_grpc as chat_grpc
from tests.security.grpc_calls import metadata


@pytest.fixture
def chat(stack: Stack) -> Iterator[tuple[chat_grpc.ChatServiceStub, tuple]]:
    """A ChatService stub and the metadata of a new user behind the gateway."""
    user = f"grpc-user-{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        yield (
            chat_grpc.ChatServiceStub(channel),
            metadata(stack.gateway_service_token, user_id=user),
        )


def post(chat: tuple, **fields: object) -> chat_pb.PostMessageResponse:
    stub, md = chat
    request = chat_pb.PostMessageRequest(content="hello", **fields)
    return stub.PostMessage(request, metadata=md, timeout=10)


def chat_count(chat: tuple) -> int:
    stub, md = chat
    listed = stub.ListChats(chat_pb.ListChatsRequest(limit=50), metadata=md, timeout=10)
    return len(listed.chats)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"on_busy": 99}, "on_busy"),
        ({"idempotency_key": " key"}, "idempotency_key"),
        ({"idempotency_key": "key "}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"idempotency_key": "caf\u00e9"}, "idempotency_key"),
    ],
)
def test_grpc_post_invalid_field_rejected(
    chat: tuple, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        post(chat, **fields)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()
    assert chat_count(chat) == 0


def test_grpc_post_policy_unset_means_enqueue(chat: tuple) -> None:
    key = f"key-{uuid.uuid4().hex}"

    first = post(chat, idempotency_key=key)
    second = post(chat, idempotency_key=key, on_busy=chat_pb.ON_BUSY_ENQUEUE)

    assert not first.replayed
    assert second.replayed
    assert second.message.id == first.message.id


def test_grpc_post_chat_id_case_is_same_request(chat: tuple) -> None:
    chat_id = post(chat).chat_id
    key = f"key-{uuid.uuid4().hex}"

    first = post(chat, chat_id=chat_id.lower(), idempotency_key=key)
    second = post(chat, chat_id=chat_id.upper(), idempotency_key=key)

    assert second.replayed
    assert second.message.id == first.message.id
    assert chat_count(chat) == 1
