"""A limit on the size of one server-sent event from a model server.

The openai SDK buffers a whole event before it parses it, with no limit, so
one endless line would grow the executor's memory until the call times out.
A response hook wraps each response body in :class:`EventSizeLimit`, which
ends the call once the bytes since the last event boundary pass the bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2

from bulkhead.log import get_logger
from executor_service.providers.base import ErrorKind, ProviderError

logger = get_logger(__name__)

# JSON escapes one character as at most 12 bytes: a surrogate pair written as
# two \uXXXX escapes. The rest of a chunk event is far below the margin.
_BYTES_PER_CHAR = 12
_EVENT_MARGIN_BYTES = 64 * 1024
# An event ends with a blank line, whichever line ending the server uses.
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")
_TAIL_BYTES = 3


def max_event_bytes(max_output_chars: int) -> int:
    """Return the event size limit, in bytes, for an output limit in characters.

    An event at this size could carry a delta of the whole output, so a
    well-formed stream never reaches it.
    """
    return _BYTES_PER_CHAR * max_output_chars + _EVENT_MARGIN_BYTES


def event_size_hook(limit: int) -> Callable[[httpx2.Response], Awaitable[None]]:
    """Return an httpx response hook that limits the event size of a response."""

    async def hook(response: httpx2.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            # Compressed bytes hold no visible event boundary. The client asks
            # for identity, so only a server that ignores that lands here.
            logger.warning(
                "model server sent a compressed stream; its event size is not checked",
                content_encoding=encoding[:40],
            )
            return
        if isinstance(response.stream, httpx2.AsyncByteStream):
            response.stream = EventSizeLimit(response.stream, limit)

    return hook


class EventSizeLimit(httpx2.AsyncByteStream):
    """A response body that fails once one event passes ``limit`` bytes."""

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = 0
        tail = b""
        async for chunk in self._stream:
            # The previous chunk's tail finds a boundary split across two chunks.
            window = tail + chunk
            end = -1
            for boundary in _BOUNDARIES:
                found = window.rfind(boundary)
                if found >= 0:
                    end = max(end, found + len(boundary))
            pending = pending + len(chunk) if end < 0 else len(window) - end
            if pending > self._limit:
                logger.warning(
                    "model stream event exceeds the size limit; call failed",
                    limit_bytes=self._limit,
                )
                raise ProviderError(
                    f"the model server sent an event over {self._limit} bytes",
                    error_class="invalid_response",
                    kind=ErrorKind.UNAVAILABLE,
                    retryable=True,
                )
            tail = window[-_TAIL_BYTES:]
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
