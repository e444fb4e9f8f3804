"""Chat routes: the caller's chats and the messages of one chat, page by page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from bulkhead.proto.chat.v1 import chat_service_pb2
from gateway.auth import CallerDep
from gateway.deps import ChatStubDep, SettingsDep, check_query_sent_once, resource_id
from gateway.problems import problem_responses
from gateway.routes import get_and_head
from gateway.schemas import ChatPage, MessagePage, chat_from_proto, message_from_proto

MAX_CURSOR_CHARS = 1024

router = APIRouter(prefix="/api/chats", tags=["chats"])

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")]
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        description="next_cursor of the previous page; omit for the first page.",
    ),
]


@get_and_head(
    router, "", response_model=ChatPage, responses=problem_responses(401, 422, 503)
)
async def list_chats(
    request: Request,
    caller: CallerDep,
    stub: ChatStubDep,
    settings: SettingsDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> ChatPage:
    """List the caller's chats, newest first."""
    check_query_sent_once(request, "limit", "cursor")
    response = await stub.ListChats(
        chat_service_pb2.ListChatsRequest(limit=limit, cursor=cursor or ""),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    return ChatPage(
        items=[chat_from_proto(chat) for chat in response.chats],
        next_cursor=response.next_cursor or None,
    )


@get_and_head(
    router,
    "/{chat_id}/messages",
    response_model=MessagePage,
    responses=problem_responses(401, 404, 422, 503),
)
async def list_messages(
    chat_id: Annotated[str, Path(description="Chat id (UUID).")],
    request: Request,
    caller: CallerDep,
    stub: ChatStubDep,
    settings: SettingsDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> MessagePage:
    """List the messages of a chat in conversation order."""
    check_query_sent_once(request, "limit", "cursor")
    response = await stub.ListMessages(
        chat_service_pb2.ListMessagesRequest(
            chat_id=resource_id(chat_id, "chat"), limit=limit, cursor=cursor or ""
        ),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    return MessagePage(
        items=[message_from_proto(message) for message in response.messages],
        next_cursor=response.next_cursor or None,
    )
