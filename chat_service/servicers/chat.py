"""chat.v1.ChatService: the user-facing RPCs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from bulkhead.log import bind_context
from bulkhead.proto.chat.v1 import chat_service_pb2, chat_service_pb2_grpc, types_pb2
from chat_service import control, posting
from chat_service.context import ServiceContext
from chat_service.convert import chat_to_proto, message_to_proto, run_to_proto
from chat_service.errors import InvalidArgumentError
from chat_service.events import AfterCommit
from chat_service.servicers.base import caller_id, streaming, unary
from chat_service.store import queries
from chat_service.store.database import retry_on_conflict
from chat_service.watch import wait_for_terminal, watch_events

MAX_PAGE = 100
DEFAULT_PAGE = 20


def _page_size(limit: int) -> int:
    if limit == 0:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgumentError("limit", f"must be between 1 and {MAX_PAGE}")
    return limit


class ChatServicer(chat_service_pb2_grpc.ChatServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    @unary
    async def PostMessage(
        self,
        request: chat_service_pb2.PostMessageRequest,
        context: grpc.aio.ServicerContext,
    ) -> chat_service_pb2.PostMessageResponse:
        user_id = caller_id(context)
        bind_context(user_id=user_id)
        ctx = self._ctx
        response, effects = await posting.post_message(
            ctx.db,
            ctx.topology,
            ctx.catalog,
            ctx.limits,
            user_id,
            request,
            first_messages=ctx.first_messages,
        )
        await ctx.after_commit(effects)
        bind_context(chat_id=response.chat_id, run_id=response.run.id)
        return response

    @unary
    async def GetRun(
        self, request: chat_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> chat_service_pb2.GetRunResponse:
        user_id = caller_id(context)
        return chat_service_pb2.GetRunResponse(
            run=await self._load_run(user_id, request.run_id)
        )

    @unary
    async def WaitRun(
        self,
        request: chat_service_pb2.WaitRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> chat_service_pb2.WaitRunResponse:
        user_id = caller_id(context)
        run = await self._load_run(user_id, request.run_id)
        timeout_s = min(
            request.timeout.ToTimedelta().total_seconds(), self._ctx.settings.max_wait_s
        )
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, max(remaining - 0.2, 0.0))
        finished = await wait_for_terminal(
            self._ctx.db,
            self._ctx.hub,
            queries.parse_uuid(run.id, "run"),
            max(timeout_s, 0.0),
            self._ctx.settings.watch_poll_s,
        )
        run = await self._load_run(user_id, request.run_id)
        return chat_service_pb2.WaitRunResponse(run=run, finished=finished)

    @streaming
    async def WatchRun(
        self,
        request: chat_service_pb2.WatchRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[chat_service_pb2.WatchRunResponse]:
        user_id = caller_id(context)
        if request.after_seq < 0:
            raise InvalidArgumentError("after_seq", "must not be negative")
        run_id = queries.parse_uuid(request.run_id, "run")
        async with self._ctx.db.transaction() as conn:
            run = await queries.get_run_row(conn, run_id, user_id)
        bind_context(user_id=user_id, run_id=str(run_id))
        async for event in watch_events(
            self._ctx.db,
            self._ctx.hub,
            run,
            request.after_seq,
            self._ctx.settings.watch_poll_s,
        ):
            yield chat_service_pb2.WatchRunResponse(event=event)

    @unary
    async def CancelRun(
        self,
        request: chat_service_pb2.CancelRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> chat_service_pb2.CancelRunResponse:
        user_id = caller_id(context)
        bind_context(user_id=user_id, run_id=request.run_id)

        async def attempt() -> tuple[Any, Any, Any, AfterCommit]:
            async with self._ctx.db.transaction() as conn:
                row, effects = await control.cancel_run(
                    conn, user_id, request.run_id, self._ctx.topology
                )
                assistant, calls = await queries.load_run_details(conn, row)
            return row, assistant, calls, effects

        row, assistant, calls, effects = await retry_on_conflict(attempt)
        await self._ctx.after_commit(effects)
        return chat_service_pb2.CancelRunResponse(
            run=run_to_proto(row, assistant, calls)
        )

    @unary
    async def RetryRun(
        self,
        request: chat_service_pb2.RetryRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> chat_service_pb2.RetryRunResponse:
        user_id = caller_id(context)
        bind_context(user_id=user_id, run_id=request.run_id)

        async def attempt() -> tuple[Any, AfterCommit]:
            async with self._ctx.db.transaction() as conn:
                return await control.retry_run(
                    conn, user_id, request.run_id, self._ctx.topology
                )

        row, effects = await retry_on_conflict(attempt)
        await self._ctx.after_commit(effects)
        return chat_service_pb2.RetryRunResponse(run=run_to_proto(row))

    @unary
    async def ListChats(
        self,
        request: chat_service_pb2.ListChatsRequest,
        context: grpc.aio.ServicerContext,
    ) -> chat_service_pb2.ListChatsResponse:
        user_id = caller_id(context)
        limit = _page_size(request.limit)
        async with self._ctx.db.transaction() as conn:
            rows, cursor = await queries.list_chats(
                conn, user_id, limit, request.cursor
            )
        return chat_service_pb2.ListChatsResponse(
            chats=[chat_to_proto(r) for r in rows], next_cursor=cursor
        )

    @unary
    async def ListMessages(
        self,
        request: chat_service_pb2.ListMessagesRequest,
        context: grpc.aio.ServicerContext,
    ) -> chat_service_pb2.ListMessagesResponse:
        user_id = caller_id(context)
        limit = _page_size(request.limit)
        chat_id = queries.parse_uuid(request.chat_id, "chat")
        async with self._ctx.db.transaction() as conn:
            rows, cursor = await queries.list_messages(
                conn, user_id, chat_id, limit, request.cursor
            )
        return chat_service_pb2.ListMessagesResponse(
            messages=[message_to_proto(r) for r in rows], next_cursor=cursor
        )

    async def _load_run(self, user_id: str, run_id: str) -> types_pb2.Run:
        async with self._ctx.db.transaction() as conn:
            row = await queries.get_run_row(
                conn, queries.parse_uuid(run_id, "run"), user_id
            )
            assistant, calls = await queries.load_run_details(conn, row)
        return run_to_proto(row, assistant, calls)
