"""Open-stream slots and slow readers, on the response class itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.problems import ProblemError
from gateway.stream_limits import LimitedStreamingResponse, StreamLimiter

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"spec_version": "2.4"}}


def test_limiter_counts_per_user() -> None:
    limiter = StreamLimiter(max_per_user=2)
    first = limiter.acquire("a")
    limiter.acquire("a")
    limiter.acquire("b")

    with pytest.raises(ProblemError) as refused:
        limiter.acquire("a")
    assert refused.value.kind.status == 429
    assert refused.value.headers["Retry-After"] == "5"
    first()
    first()  # a second call frees nothing more
    assert limiter.open_streams("a") == 1
    limiter.acquire("a")


async def test_slow_reader_disconnected_and_slot_freed() -> None:
    limiter = StreamLimiter(max_per_user=1)
    release = limiter.acquire("reader")
    closed = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: x\n\n"
        finally:
            closed.set()

    async def send(message: dict[str, Any]) -> None:
        if len(sent) >= 3:
            await asyncio.Event().wait()  # a reader that stopped reading
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    response = LimitedStreamingResponse(
        body(), release=release, write_timeout_s=0.2, media_type="text/event-stream"
    )
    await asyncio.wait_for(response(SCOPE, receive, send), timeout=5)

    assert len(sent) == 3
    assert closed.is_set()
    assert limiter.open_streams("reader") == 0


async def test_finished_stream_frees_slot() -> None:
    limiter = StreamLimiter(max_per_user=1)
    release = limiter.acquire("reader")
    sent: list[dict[str, Any]] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"data: done\n\n"

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    response = LimitedStreamingResponse(body(), release=release, write_timeout_s=1)
    await response(SCOPE, receive, send)

    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert limiter.open_streams("reader") == 0
