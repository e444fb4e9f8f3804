"""Limits on SSE streams: open streams per user, and readers that stop reading.

Open streams are counted per gateway process, in memory: with N gateway
replicas behind a load balancer a user may hold up to N times
``BULKHEAD_MAX_STREAMS_PER_USER`` streams.

Memory per stream is bounded by flow control all the way back. uvicorn
pauses a write once the socket buffer is full, so the relay stops reading the
gRPC stream. chat_service's per-watcher queue then fills and its watcher
falls back to database reads. A write that stays blocked for ``BULKHEAD_SSE_WRITE_TIMEOUT_S``
closes the connection, so a stalled reader does not hold a stream slot and a
gRPC call forever; it resumes with Last-Event-ID when it reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from bulkhead.log import get_logger
from gateway.problems import RATE_LIMITED, ProblemError

# Streams end at unpredictable times, so Retry-After requests that the client wait
# a few seconds before it tries again.
STREAM_LIMIT_RETRY_AFTER_S = 5

logger = get_logger(__name__)


class StreamLimiter:
    """Counts the open event streams of each user in this process."""

    def __init__(self, max_per_user: int) -> None:
        self._max_per_user = max_per_user
        self._open: dict[str, int] = {}

    def open_streams(self, user_id: str) -> int:
        return self._open.get(user_id, 0)

    def acquire(self, user_id: str) -> Callable[[], None]:
        """Take a stream slot of ``user_id``; return the function that frees it.

        Raises a 429 problem with Retry-After when the user has no slot left.
        The returned function may be called more than once.
        """
        count = self._open.get(user_id, 0)
        if self._max_per_user and count >= self._max_per_user:
            raise ProblemError(
                RATE_LIMITED,
                f"Too many open event streams: at most {self._max_per_user} "
                "per user. Close one, or retry later.",
                headers={"Retry-After": str(STREAM_LIMIT_RETRY_AFTER_S)},
            )
        self._open[user_id] = count + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            remaining = self._open.get(user_id, 1) - 1
            if remaining > 0:
                self._open[user_id] = remaining
            else:
                self._open.pop(user_id, None)

        return release


class _SlowReaderError(Exception):
    pass


class LimitedStreamingResponse(StreamingResponse):
    """A StreamingResponse that frees its stream slot when it ends, however it
    ends, and closes the connection when one write blocks for too long."""

    def __init__(
        self,
        content: Any,
        *,
        release: Callable[[], None],
        write_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._release = release
        self._write_timeout_s = write_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_timeout(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self._write_timeout_s)
            except TimeoutError:
                raise _SlowReaderError from None

        try:
            await super().__call__(scope, receive, send_with_timeout)
        except _SlowReaderError:
            # Returning without finishing the body makes uvicorn close the
            # connection (it logs "ASGI callable returned without completing
            # response"); the client resumes with Last-Event-ID.
            logger.warning(
                "slow event stream reader disconnected",
                write_timeout_s=self._write_timeout_s,
            )
        finally:
            self._release()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
