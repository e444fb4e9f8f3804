"""The event size limit, on response bodies split at every offset."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx2
import pytest

from executor_service.providers import ProviderError
from executor_service.providers.event_size import (
    MAX_ERROR_BODY_BYTES,
    EventSizeLimit,
    event_size_hook,
    max_event_bytes,
)


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


@pytest.mark.parametrize(
    "separator", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r", b"\n\r\n", b"\r\n\n"]
)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
async def test_small_events_pass_in_any_split(separator: bytes, size: int) -> None:
    event = b"data: " + b"y" * 40 + separator
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


async def hooked(
    status: int, headers: dict[str, str], chunks: list[bytes]
) -> httpx2.Response:
    response = httpx2.Response(status, headers=headers, stream=ChunkStream(chunks))
    await event_size_hook(limit=1000)(response)
    return response


async def test_error_body_limited_as_a_whole() -> None:
    # Blank lines do not split an error body into events.
    chunks = [b"error text\n\n" * 1000] * 100
    response = await hooked(500, {}, chunks)

    with pytest.raises(ProviderError) as raised:
        await response.aread()

    assert raised.value.message == (
        f"the model server sent a response body over {MAX_ERROR_BODY_BYTES} bytes"
    )


@pytest.mark.parametrize("encoding", ["x-unknown", "identity, identity", "IDENTITY"])
async def test_uncompressed_body_with_odd_encoding_limited(encoding: str) -> None:
    response = await hooked(200, {"Content-Encoding": encoding}, [b"z" * 5000])

    with pytest.raises(ProviderError):
        await response.aread()


async def test_gzip_body_left_to_the_decoder() -> None:
    body = gzip.compress(b"data: " + b"z" * 5000 + b"\n\n")
    response = await hooked(200, {"Content-Encoding": "gzip"}, [body])

    assert len(await response.aread()) == 5008
