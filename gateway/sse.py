"""Relay of a run's events from ``ChatService.WatchRun`` to a Server-Sent Events body.

Wire format (HTML Living Standard, "Server-sent events"): the stream opens
with a ``retry:`` field, then one event per RunEvent with ``id: <seq>``,
``event: <type>`` and ``data: <data_json>``, and a ``: ping`` comment when
nothing was sent for the heartbeat interval. The stream ends after the
terminal event, when chat_service ends or breaks the call, or after the
maximum stream duration. In the last two cases the client reconnects with
``Last-Event-ID`` and resumes after the last event it received.

NOTE: on SIGTERM, uvicorn waits BULKHEAD_GATEWAY_SHUTDOWN_TIMEOUT_S for open
streams, then cancels them and logs each one as an error with a traceback.
Clients resume as after any dropped connection. Ending the streams as
shutdown starts would need a hook that uvicorn 0.54 does not give the app.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import grpc
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from bulkhead.log import get_logger
from bulkhead.proto.chat.v1 import chat_service_pb2, chat_service_pb2_grpc
from gateway.problems import validation_problem

TERMINAL_EVENT_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_MAX_SEQ = 2**63 - 1
_SEQ_PATTERN = re.compile(r"[0-9]+")

logger = get_logger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    """Timing of one event stream, in seconds (retry in milliseconds)."""

    heartbeat_s: float
    max_duration_s: float
    retry_ms: int


def parse_last_event_id(header: str | None, query: str | None) -> int:
    """Return the sequence number to resume after; 0 to start from the beginning.

    The header wins over the query parameter, because a browser's EventSource
    reconnects to the same URL and sends its latest id in the header. Raises a
    422 problem for anything but a non-negative 64-bit integer.
    """
    value, field = (
        (header, "Last-Event-ID") if header is not None else (query, "last_event_id")
    )
    if value is None:
        return 0
    value = value.strip(" \t")
    digits = value.lstrip("0") or "0"
    # The length check keeps int() from parsing an arbitrarily long number.
    if (
        not _SEQ_PATTERN.fullmatch(value)
        or len(digits) > len(str(_MAX_SEQ))
        or int(digits) > _MAX_SEQ
    ):
        raise validation_problem(
            field, f"must be an event id: an integer from 0 to {_MAX_SEQ}"
        )
    return int(digits)


async def relay_run_events(
    stub: chat_service_pb2_grpc.ChatServiceStub,
    request: chat_service_pb2.WatchRunRequest,
    metadata: tuple[tuple[str, str], ...],
    limits: StreamLimits,
) -> AsyncIterator[bytes]:
    """Yield the SSE body for one WatchRun call.

    The call is opened on the first iteration, so that a response that is never
    sent leaves no call behind, and it is cancelled when the body ends or the
    client disconnects. Cancelling the call never cancels the run.
    """
    yield format_sse_event(retry=limits.retry_ms)
    # No deadline: the stream lasts as long as the run. The maximum duration
    # below bounds it instead.
    call = stub.WatchRun(request, metadata=metadata)
    events = 0
    outcome = "client disconnected"
    try:
        async with aclosing(_relay(call, limits)) as chunks:
            async for chunk in chunks:
                if chunk is not KEEPALIVE_COMMENT:
                    events += 1
                yield chunk
        outcome = "ended"
    except grpc.aio.AioRpcError as error:
        # chat_service restarted or dropped the call: ending the body makes
        # the client reconnect and resume after its last event.
        outcome = "broken"
        logger.warning(
            "run event stream broke",
            run_id=request.run_id,
            grpc_code=error.code().name,
            events=events,
        )
    finally:
        call.cancel()
        logger.debug(
            "run event stream closed",
            run_id=request.run_id,
            outcome=outcome,
            events=events,
        )


async def _relay(
    call: grpc.aio.UnaryStreamCall[
        chat_service_pb2.WatchRunRequest, chat_service_pb2.WatchRunResponse
    ],
    limits: StreamLimits,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.max_duration_s
    read: asyncio.Future[object] | None = None
    try:
        while (remaining := deadline - loop.time()) > 0:
            if read is None:
                read = asyncio.ensure_future(call.read())
            # Waiting on the pending read, rather than wrapping it in a
            # timeout, keeps the read alive across heartbeats.
            done, _ = await asyncio.wait(
                {read}, timeout=min(limits.heartbeat_s, remaining)
            )
            if not done:
                if loop.time() < deadline:
                    yield KEEPALIVE_COMMENT
                continue
            message = read.result()
            read = None
            if message is grpc.aio.EOF:
                return
            assert isinstance(message, chat_service_pb2.WatchRunResponse)
            event = message.event
            yield format_sse_event(
                data_str=event.data_json, event=event.type, id=str(event.seq)
            )
            if event.type in TERMINAL_EVENT_TYPES:
                return
    finally:
        if read is not None:
            read.cancel()
