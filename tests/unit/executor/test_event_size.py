"""The event size limit, on response bodies split at every offset."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from executor_service.providers import ProviderError
from executor_service.providers.event_size import EventSizeLimit, max_event_bytes


class ChunkStream(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


async def read(chunks: list[bytes], limit: int) -> bytes:
    return b"".join(
        [chunk async for chunk in EventSizeLimit(ChunkStream(chunks), limit)]
    )


def test_limit_covers_escaped_output() -> None:
    assert max_event_bytes(1000) == 12 * 1000 + 64 * 1024


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
async def test_small_events_pass_in_any_split(ending: bytes, size: int) -> None:
    event = b"data: " + b"y" * 40 + ending + ending
    body = event * 50

    assert await read(split(body, size), limit=60) == body


@pytest.mark.parametrize("size", [1, 5, 64, 4096])
async def test_one_long_line_fails(size: int) -> None:
    body = b"data: " + b"z" * 10_000

    with pytest.raises(ProviderError) as raised:
        await read(split(body, size), limit=1000)

    assert raised.value.error_class == "invalid_response"
    assert raised.value.retryable


async def test_many_data_lines_of_one_event_fail() -> None:
    # The SDK joins the data lines of one event, and only a blank line ends it.
    body = b"data: short\n" * 500

    with pytest.raises(ProviderError):
        await read(split(body, 100), limit=1000)


async def test_close_reaches_the_wrapped_stream() -> None:
    inner = ChunkStream([b"data: a\n\n"])

    await EventSizeLimit(inner, 100).aclose()

    assert inner.closed
