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
# An event ends with an empty line. A line ends with CRLF, LF or CR, so two
# line ends in a row always contain one of these pairs.
_BOUNDARIES = (b"\n\n", b"\n\r", b"\r\r")
_TAIL_BYTES = 1
# An error response is read whole by the SDK, and it has no events.
MAX_ERROR_BODY_BYTES = 1024 * 1024
# Content codings that httpx decodes. It passes a body with any other coding
# on as it came, so that body is checked like an uncompressed one.
_DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


def max_event_bytes(max_output_chars: int) -> int:
    """Return the event size limit, in bytes, for an output limit in characters.

    An event at this size could carry a delta of the whole output, so a
    well-formed stream never reaches it.
    """
    return _BYTES_PER_CHAR * max_output_chars + _EVENT_MARGIN_BYTES


def event_size_hook(limit: int) -> Callable[[httpx2.Response], Awaitable[None]]:
    """Return an httpx response hook that limits each event of a response to
    ``limit`` bytes, and an error response to MAX_ERROR_BODY_BYTES."""

    async def hook(response: httpx2.Response) -> None:
        encoding = response.headers.get("content-encoding", "").lower()
        codings = {coding.strip() for coding in encoding.split(",")}
        if codings & _DECODED_CODINGS:
            # Compressed bytes hold no visible event boundary. The client asks
            # for identity, so only a server that ignores that lands here.
            logger.warning(
                "model server sent a compressed response; its size is not checked",
                content_encoding=encoding[:40],
            )
            return
        if not isinstance(response.stream, httpx2.AsyncByteStream):
            return
        if response.status_code >= 300:
            response.stream = EventSizeLimit(
                response.stream, MAX_ERROR_BODY_BYTES, boundaries=()
            )
        else:
            response.stream = EventSizeLimit(response.stream, limit)

    return hook


class EventSizeLimit(httpx2.AsyncByteStream):
    """A response body that fails once one event passes ``limit`` bytes.

    With no ``boundaries`` the whole body is one event.
    """

    def __init__(
        self,
        stream: httpx2.AsyncByteStream,
        limit: int,
        boundaries: tuple[bytes, ...] = _BOUNDARIES,
    ) -> None:
        self._stream = stream
        self._limit = limit
        self._boundaries = boundaries

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = 0
        tail = b""
        async for chunk in self._stream:
            # The previous chunk's tail finds a boundary split across two chunks.
            window = tail + chunk
            end = -1
            for boundary in self._boundaries:
                found = window.rfind(boundary)
                if found >= 0:
                    end = max(end, found + len(boundary))
            pending = pending + len(chunk) if end < 0 else len(window) - end
            if pending > self._limit:
                part = "an event" if self._boundaries else "a response body"
                logger.warning(
                    "model server response exceeds the size limit; call failed",
                    part=part,
                    limit_bytes=self._limit,
                )
                raise ProviderError(
                    f"the model server sent {part} over {self._limit} bytes",
                    error_class="invalid_response",
                    kind=ErrorKind.UNAVAILABLE,
                    retryable=True,
                )
            tail = window[-_TAIL_BYTES:]
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
